"""`miadmark strip INPUT... --out DIR --key KEY --cert CERT (--trust CERT ... | --any-signer)`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..dicomio import read_dicom, write_atomic
from ..errors import MiadmarkError, unexpected_input
from ..keys import load_certificates, load_identity, read_passphrase
from ..protect import strip_bytes
from .files import Tally, add_progress_option, iter_inputs, output_path


def register(sub) -> None:
    p = sub.add_parser("strip", help="remove the watermark with a recipient key: the bit-exact original")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (walked recursively)")
    p.add_argument("--out", required=True, help="output folder; each output keeps its path relative to its INPUT")
    p.add_argument("--key", required=True, help="this site's private key (PEM)")
    p.add_argument("--cert", required=True, help="this site's certificate (PEM)")
    p.add_argument("--passphrase-file", help="passphrase of --key")
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--trust", action="append", metavar="CERT", help="certificate of a signer to accept")
    trust.add_argument("--any-signer", action="store_true", help="accept any signer whose signature verifies")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    tally = Tally("stripped")
    try:
        keyring = [load_identity(args.key, args.cert, read_passphrase(args.passphrase_file))]
        trust = None if args.any_signer else load_certificates(args.trust)
    except (MiadmarkError, OSError) as exc:
        print(f"miadmark strip: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    inputs = list(iter_inputs(args.inputs, tally.skipped))
    tally.start_progress(len(inputs), args.progress)
    for item in inputs:
        try:
            original = strip_bytes(read_dicom(item.path), keyring=keyring, trust=trust)
            dst = output_path(out_dir, item)
            write_atomic(original, dst)  # the file protect read, byte for byte
        except (MiadmarkError, OSError, ValueError) as exc:
            tally.fail(item.path, str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file fails alone, its value never echoed
            tally.fail(item.path, str(unexpected_input(exc, "stripping")))
            continue
        tally.ok(item.path, dst)
    return tally.summary()
