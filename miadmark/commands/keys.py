"""`miadmark keys new NAME --out DIR [--passphrase-file F] [--force]`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MiadmarkError
from ..keys import new_identity, read_passphrase


def register(sub) -> None:
    keys = sub.add_parser("keys", help="make site keys and certificates")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="RSA-3072 private key (0600) and a self-signed certificate, CN=NAME")
    new.add_argument("name", help="the site name: the certificate's CN and the file names NAME.key.pem / NAME.cert.pem")
    new.add_argument("--out", default=".", help="folder for NAME.key.pem and NAME.cert.pem")
    new.add_argument("--passphrase-file", help="encrypt the private key with the passphrase in this file")
    new.add_argument("--force", action="store_true",
                     help="replace an existing NAME key; the old pair is kept as NAME.retired-<UTC time>.*.pem")
    new.set_defaults(func=run_new)


def run_new(args) -> int:
    before = set(Path(args.out).glob(f"{args.name}.retired-*.pem"))
    try:
        key_path, cert_path = new_identity(args.name, args.out, read_passphrase(args.passphrase_file),
                                           force=args.force)
    except (MiadmarkError, OSError) as exc:
        print(f"miadmark keys new: {exc}", file=sys.stderr)
        return 1
    for old in sorted(set(Path(args.out).glob(f"{args.name}.retired-*.pem")) - before):
        print(f"kept {old} (the replaced pair: it still opens what was protected for it)")
    print(f"key  {key_path} (mode 0600)\ncert {cert_path}")
    return 0
