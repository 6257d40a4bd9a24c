"""The `miadmark` command. Subcommands are modules with a register(subparsers): the core's are listed in
COMMANDS; every other package registers its own under the entry-point group ENTRY_POINTS (pyproject.toml),
so the core names no adapter and imports one only because its package registered a command."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

# The core's commands: name -> module defining register(subparsers) (which sets args.func).
COMMANDS = {
    "keys": "miadmark.commands.keys", "protect": "miadmark.commands.protect",
    "strip": "miadmark.commands.strip", "inspect": "miadmark.commands.inspect",
    "verify": "miadmark.commands.verify",
    "train": "miadmark.commands.train", "train_prior": "miadmark.commands.train_prior",
    "train_generator": "miadmark.commands.train_generator", "evaluate": "miadmark.commands.evaluate",
    "rules": "miadmark.commands.rules",
}
ENTRY_POINTS = "miadmark.commands"  # the other packages' commands (gateway, receive, queue, demo, release)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def registered_commands() -> dict[str, str]:
    """Every command: the core's, then those other packages registered (name -> module)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}
    # A source checkout reads its own pyproject too: an editable install's metadata is what was
    # installed, and a command registered since then would be missing until the next install.
    if PYPROJECT.exists():
        import tomllib
        try:
            declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINTS]
            found.update(declared)
        except (KeyError, ValueError, OSError):
            pass
    return {**COMMANDS, **{name: module for name, module in found.items() if name not in COMMANDS}}


def quiet_pydicom() -> None:
    """pydicom warns on every odd value of real files, pynetdicom logs every PDU: operators need our lines."""
    import warnings

    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    warnings.filterwarnings("ignore", module="pydicom")


DESCRIPTION = ("Visible adversarial watermarks for DICOM images leaving a hospital, removable bit-exactly "
               "by the sites holding a recipient key. `miadmark COMMAND --help` explains each command.")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="miadmark", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"miadmark {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", metavar="PATH",
                        help="write log lines to PATH instead of stderr, rotated by size (PATH.1, PATH.2, ...)")
    parser.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024, metavar="N",
                        help="rotate the --log-file when it would grow past N bytes (default 10 MiB)")
    parser.add_argument("--log-backups", type=int, default=5, metavar="N",
                        help="rotated --log-file copies to keep (default 5)")
    parser.add_argument("--log-json", action="store_true",
                        help="one JSON object per log line (time, level, logger, process, message)")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for module in registered_commands().values():
        import_module(module).register(sub)
    describe_subcommands(parser)
    return parser


def describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """`miadmark X --help` opens with the one line `miadmark --help` lists for X (argparse shows a
    subcommand's help only in its parent's list), at every level (`queue status`, `keys new`...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and lines.get(name):
                    sub.description = lines[name][0].upper() + lines[name][1:] + "."
                describe_subcommands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import configure
    try:
        configure(logging.DEBUG if args.verbose else logging.INFO, log_file=args.log_file, json_lines=args.log_json,
                  max_bytes=args.log_max_bytes, backups=args.log_backups)
    except OSError as exc:
        print(f"{args.log_file}: cannot write the log file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.verbose:
        quiet_pydicom()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
