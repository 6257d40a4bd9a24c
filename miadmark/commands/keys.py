"""`miadmark keys new NAME --out DIR [--passphrase-file F]`."""

from __future__ import annotations

import sys

from ..errors import MiadmarkError
from ..keys import new_identity, read_passphrase


def register(sub) -> None:
    keys = sub.add_parser("keys", help="make site keys and certificates")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="RSA-3072 private key (0600) and a self-signed certificate, CN=NAME")
    new.add_argument("name", help="the site name: the certificate's CN and the file names NAME.key.pem / NAME.cert.pem")
    new.add_argument("--out", default=".", help="folder for NAME.key.pem and NAME.cert.pem")
    new.add_argument("--passphrase-file", help="encrypt the private key with the passphrase in this file")
    new.set_defaults(func=run_new)


def run_new(args) -> int:
    try:
        key_path, cert_path = new_identity(args.name, args.out, read_passphrase(args.passphrase_file))
    except (MiadmarkError, OSError) as exc:
        print(f"{args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"key  {key_path} (mode 0600)\ncert {cert_path}")
    return 0
