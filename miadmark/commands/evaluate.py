"""`miadmark evaluate --data DIR --profile NAME [--models ...] --out DIR`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a watermark profile against white-box and black-box models")
    p.add_argument("--data", required=True)
    p.add_argument("--profile", default=None)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import main

    return main(args)
