"""The `miadmark` command. Each subcommand lives in miadmark.commands.<name> with a register()."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# Modules under miadmark.commands; each defines register(subparsers) and sets args.func.
COMMAND_MODULES = [
    "keys", "protect", "strip", "inspect", "demo",
    "train", "train_prior",
    "evaluate",
    "gateway", "receive", "rules", "queue",
    "release",
]


def quiet_pydicom() -> None:
    """pydicom warns on every odd value of real files, pynetdicom logs every PDU: operators need our lines."""
    import warnings

    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    warnings.filterwarnings("ignore", module="pydicom")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miadmark", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        import_module(f"miadmark.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        quiet_pydicom()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
