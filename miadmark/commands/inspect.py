"""`miadmark inspect FILE [--key KEY --cert CERT]`: protected or not, recipients, signer, parameters."""

from __future__ import annotations

import json
import sys

from ..dicomio import read_dicom
from ..errors import MiadmarkError, unexpected_input
from ..keys import load_identity, read_passphrase
from ..protect import inspect_record


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show whether a file is protected, for whom, by whom")
    p.add_argument("file", help="the DICOM file to look at")
    p.add_argument("--key", help="a recipient's private key: also show the signer and watermark parameters")
    p.add_argument("--cert", help="certificate of --key")
    p.add_argument("--passphrase-file", help="file holding the passphrase of --key")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        keyring = None
        if args.key or args.cert:
            if not (args.key and args.cert):
                raise MiadmarkError("--key and --cert go together")
            keyring = [load_identity(args.key, args.cert, read_passphrase(args.passphrase_file))]
        info = inspect_record(read_dicom(args.file), keyring)
    except (MiadmarkError, OSError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a malformed record is a refusal, its value never echoed
        print(f"{args.file}: {unexpected_input(exc, 'inspecting')}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0
