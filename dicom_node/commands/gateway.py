"""`miadmark gateway --config FILE`: the protecting C-STORE gateway (runs until SIGTERM/SIGINT).

SIGHUP (or a change of the file) reloads the rules; a bad file keeps the running ones.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from miadmark.config import ConfigError, load_config

log = logging.getLogger("dicom_node")


def register(sub) -> None:
    p = sub.add_parser("gateway", help="run the protecting DICOM gateway (C-STORE SCP -> rules -> forward)")
    p.add_argument("--config", required=True, help="the site YAML file")
    p.add_argument("--bind", help="listen address (default: gateway.bind)")
    p.add_argument("--port", type=int, help="listen port (default: gateway.port)")
    p.add_argument("--forward", choices=["process", "thread", "none"], default="process",
                   help="where forwarding runs: a child process (default, own CPU core), threads of this "
                        "process, or nowhere (receive and queue only)")
    p.set_defaults(func=run)


def unserved_destinations(cfg) -> dict[str, str]:
    """The configured destinations the gateway has no transport for (e.g. orthanc_*: the Orthanc plugin's)."""
    from dicomnet.destinations import unserved

    from .. import transports  # noqa: F401 - registers the gateway's transports

    return unserved("gateway", cfg.destinations)


def quiet_pynetdicom(args) -> None:
    """pynetdicom logs several INFO lines per C-STORE; keep ours readable (and cheap) unless -v."""
    if not getattr(args, "verbose", False):
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def run(args) -> int:
    from dicomnet import metrics

    from ..gateway import Gateway
    quiet_pynetdicom(args)
    try:
        cfg = load_config(args.config)
        unserved = unserved_destinations(cfg)
        if len(unserved) == len(cfg.destinations):
            what = ("no destinations and no rules" if not cfg.destinations and not cfg.rules else
                    "no destination the gateway sends to (" + "; ".join(sorted(set(unserved.values()))) + ")")
            print(f"{args.config}: {what}: nothing for a gateway to send"
                  + (" (a receiver section: run `miadmark receive --config` with it)" if cfg.receiver else ""),
                  file=sys.stderr)
            return 2
        for name, why in sorted(unserved.items()):
            log.warning("destination %s: not sent by this gateway: %s", name, why)
        if cfg.gateway.metrics_port is not None:  # a service: count in the site's files whatever --forward
            metrics.use_multiprocess(cfg.gateway.metrics_dir)  # says, so a release with this config counts in
        gateway = Gateway(cfg, bind=args.bind, port=args.port, forward=args.forward).start()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.config}: cannot start the gateway: {exc}", file=sys.stderr)
        return 1
    return serve(gateway, reload=gateway.reload)


def serve(service, reload=None) -> int:
    """Block until SIGTERM/SIGINT; SIGHUP calls reload(). Stops the service cleanly."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if reload is not None:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, args=("SIGHUP",), daemon=True).start())
    while not done.wait(1.0):
        pass
    log.info("stopping")
    service.stop()
    return 0
