"""The `miadmark` command. Subcommands are modules with a register(subparsers), listed in COMMANDS."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# The command registry: name -> module defining register(subparsers) (which sets args.func). The
# core's commands live in miadmark.commands; the node's beside the node (dicom_node.commands), imported
# only here, so the core package itself never imports an adapter.
COMMANDS = {
    "keys": "miadmark.commands.keys", "protect": "miadmark.commands.protect",
    "strip": "miadmark.commands.strip", "inspect": "miadmark.commands.inspect",
    "demo": "miadmark.commands.demo", "train": "miadmark.commands.train",
    "train_prior": "miadmark.commands.train_prior", "evaluate": "miadmark.commands.evaluate",
    "gateway": "dicom_node.commands.gateway", "receive": "dicom_node.commands.receive",
    "rules": "miadmark.commands.rules", "queue": "dicom_node.commands.queue",
}


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
    for module in COMMANDS.values():
        import_module(module).register(sub)
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
