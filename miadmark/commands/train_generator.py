"""`miadmark train-generator --data DIR --out FILE [--surrogates A B ...] [--device cpu] [--steps N] [--seed S]`."""

from __future__ import annotations

import shlex


def register(sub) -> None:
    p = sub.add_parser("train-generator", help="train the one-pass watermark generator of profile fast")
    p.add_argument("--data", required=True, help="dataset folder: its training split is used, never validation")
    p.add_argument("--out", required=True, help="weights file (.pt, fp16); a .json beside it records the run")
    p.add_argument("--surrogates", nargs="+", default=None,
                   help="surrogate names (default: the dataset's family, as the engine chooses them)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="where to train: auto (CUDA when available), cpu (default) or cuda")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps of --batch images (default 3000)")
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this many minutes (default: no limit)")
    p.add_argument("--width", type=int, default=16, help="channels of the generator's first level (default 16)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed (default 0.002)")
    p.add_argument("--p-eot", type=float, default=1.0,
                   help="share of the steps that apply the third-party transforms (JPEG, resize, blur; default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training run")
    p.add_argument("--design", choices=["box", "spread"], default="box",
                   help="the mark it learns: box (the discreet level's logo box, default) or spread (a level's "
                        "keyed lattice; --strength names the level)")
    p.add_argument("--strength", default="standard", help="with --design spread: the level (default standard)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..engine.train_generator import make_generator

    torch.set_num_threads(args.threads)
    parts = ["miadmark", "train-generator", "--data", args.data, "--out", args.out, "--device", args.device,
             "--steps", str(args.steps), "--max-minutes", f"{args.max_minutes:g}", "--width", str(args.width),
             "--batch", str(args.batch), "--lr", f"{args.lr:g}", "--p-eot", f"{args.p_eot:g}",
             "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.surrogates:
        parts += ["--surrogates", *args.surrogates]
    if args.design == "spread":
        from ..engine.train_spread import make_spread_generator

        parts += ["--design", "spread", "--strength", args.strength]
        meta = make_spread_generator(args.data, args.surrogates, args.out, args.strength, steps=args.steps,
                                     max_minutes=args.max_minutes, seed=args.seed, width=args.width,
                                     device=args.device, batch=args.batch, lr=args.lr, p_eot=args.p_eot,
                                     command=" ".join(shlex.quote(p) for p in parts))
        acc = meta["surrogate_accuracy_val"]
        print(f"{args.out}: spread generator ({args.strength}) for {', '.join(meta['surrogates'])}, "
              f"{meta['steps_done']} steps ({meta['train_seconds']:.0f}s); surrogate accuracy on {acc['n']} "
              f"validation images: clean {acc['clean']}, generated {acc['generated']}, mark filled "
              f"{acc['generated_mark_filled']}")
        return 0
    meta = make_generator(args.data, args.surrogates, args.out, steps=args.steps, max_minutes=args.max_minutes,
                          seed=args.seed, width=args.width, device=args.device,
                          batch=args.batch, lr=args.lr, p_eot=args.p_eot,
                          command=" ".join(shlex.quote(p) for p in parts))
    acc = meta["surrogate_accuracy_val"]
    print(f"{args.out}: generator for {', '.join(meta['surrogates'])}, {meta['steps_done']} steps "
          f"({meta['train_seconds']:.0f}s); surrogate accuracy on {acc['n']} validation images: clean "
          f"{acc['clean']}, generated {acc['generated']}, box filled {acc['generated_box_filled']}")
    return 0
