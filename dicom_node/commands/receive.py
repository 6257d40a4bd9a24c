"""`miadmark receive --config FILE`: the receiving node (strip with keys, store clean originals)."""

from __future__ import annotations

import logging
import sys

from miadmark.config import ConfigError, load_config
from miadmark.errors import MiadmarkError

log = logging.getLogger("dicom_node")


def register(sub) -> None:
    p = sub.add_parser("receive", help="run the receiving node (C-STORE SCP that strips and stores originals)")
    p.add_argument("--config", required=True, help="the site YAML file (receiver section)")
    p.add_argument("--bind", help="listen address (default: receiver.bind)")
    p.add_argument("--port", type=int, help="listen port (default: receiver.port)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..receiver import Receiver

    from .gateway import quiet_pynetdicom, serve
    quiet_pynetdicom(args)
    try:
        receiver = Receiver(load_config(args.config), bind=args.bind, port=args.port).start()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (MiadmarkError, OSError) as exc:
        print(f"{args.config}: cannot start the receiver: {exc}", file=sys.stderr)
        return 1
    # SIGHUP (`systemctl reload`): nothing to reload here; logged rather than ending the process
    return serve(receiver, reload=lambda reason: log.info("%s: the receiving node has nothing to reload "
                                                          "(restart it to change keys or settings)", reason))
