"""`miadmark train-prior --data DIR --out FILE [--surrogates A B ...] [--steps N] [--seed S]`."""

from __future__ import annotations

import shlex


def register(sub) -> None:
    p = sub.add_parser("train-prior", help="optimize the universal logo maps `transfer` starts from")
    p.add_argument("--data", required=True, help="dataset folder: its training split is used, never validation")
    p.add_argument("--out", required=True, help="prior file (.pt); a .json beside it records the run")
    p.add_argument("--surrogates", nargs="+", default=None, help="surrogate names (default: the engine's)")
    p.add_argument("--steps", type=int, default=400, help="Adam steps per target class")
    p.add_argument("--seed", type=int, default=0, help="seed of the optimisation")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..engine.prior import make_prior

    torch.set_num_threads(args.threads)
    parts = ["miadmark", "train-prior", "--data", args.data, "--out", args.out, "--steps", str(args.steps),
             "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.surrogates:
        parts += ["--surrogates", *args.surrogates]
    meta = make_prior(args.data, args.surrogates, args.out, steps=args.steps, seed=args.seed,
                      command=" ".join(shlex.quote(p) for p in parts))
    print(f"{args.out}: prior for {', '.join(meta['surrogates'])} ({meta['train_seconds']:.0f}s)")
    return 0
