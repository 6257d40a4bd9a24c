"""`miadmark evaluate --data DIR --profile NAME [--models ...] --out DIR`."""

from __future__ import annotations

import argparse
import sys

from ..engine import PROFILE_HELP, PROFILE_NAMES
from ..engine.profile import DEFAULT_STRENGTH, STRENGTHS


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a watermark profile against white-box and black-box models")
    p.add_argument("--data", required=True, help="dataset folder (its seeded validation split is used)")
    p.add_argument("--profile", default=None, choices=PROFILE_NAMES,
                   help=PROFILE_HELP)
    p.add_argument("--models", nargs="*", default=None,
                   help="black-box model weight files (default: miadmark/surrogates/weights/blackbox/*.pt)")
    p.add_argument("--reference-models", nargs="*", default=None,
                   help="more black-box weight files, scored on the same images in their own groups "
                        "(reference_*), outside the targets: e.g. the models a new set replaces")
    p.add_argument("--out", required=True, help="report folder (report.json, report.html, PNGs)")
    p.add_argument("--limit", type=int, default=200, help="validation images used (seeded subset)")
    p.add_argument("--batch", type=int, default=32, help="images per engine batch (default 32)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="where the engine runs: auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the optimiser")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--max-area-fraction", type=float, default=1 / 9,
                   help="largest logo area as a fraction of the image (default 1/9)")
    p.add_argument("--alpha-max", type=float, default=0.6, help="largest logo opacity (default 0.6)")
    p.add_argument("--examples", type=int, default=4, help="example images written (PNG)")
    p.add_argument("--options", default=None, help='engine options as JSON, e.g. \'{"iterations": 20}\'')
    p.add_argument("--third-parties", nargs="*", default=None, metavar="NAME",
                   help="third parties scored on the protected images (default all: plain careful adaptive "
                        "removal_unet mark_inpainted jpeg_q75 resize_half)")
    p.add_argument("--third-party-options", default=None, metavar="JSON",
                   help='typed options per third party, unknown keys refused, e.g. \'{"adaptive": {"epochs": 1}}\'')
    p.add_argument("--own-images", type=int, default=1000,
                   help="training images the adaptive and removal third parties protect with the tool (default 1000)")
    p.add_argument("--own-profile", default="",
                   help="the profile they protect them with (default: the evaluated one; on a CPU auto runs fast)")
    p.add_argument("--own-options", default=None, metavar="JSON",
                   help="engine options of the profile they protect them with (default: the evaluated ones it knows)")
    p.add_argument("--strength", default=None, choices=STRENGTHS,
                   help=f"strength level of the profile (default {DEFAULT_STRENGTH})")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bars on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import main

    return main(args)
