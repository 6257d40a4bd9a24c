"""`miadmark train --data DIR --arch NAME --out FILE [--epochs N] [--device ...] [--seed S] [--logo-augment]`."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train a surrogate / evaluation classifier from scratch")
    p.add_argument("--data", required=True, help="dataset folder (class folders + labels.csv) or MedMNIST npz")
    p.add_argument("--arch", required=True, help="resnet10, resnet18, mobilenetv3, convvit, vit, vgg")
    p.add_argument("--out", required=True, help="weights file (.pt, fp16); a .json beside it records the run")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training split (default 12)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the engine runs: auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    p.add_argument("--size", type=int, default=64, help="input resolution (square)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 0.003)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (hash of md5 groups)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--logo-augment", action="store_true",
                   help="paste random logos while training (a careful third party)")
    p.add_argument("--adv-eps", type=float, default=0.0,
                   help="fast adversarial training at this L-inf budget (grey levels of 255); 0: off")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bars on stderr (default: when stderr is a terminal)")
    p.add_argument("--max-train", type=int, default=0, help="train on a seeded subset of this many images; 0: all")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..engine.base import resolve_device
    from ..surrogates.train import train

    torch.set_num_threads(args.threads)
    parts = ["miadmark", "train", "--data", args.data, "--arch", args.arch, "--out", args.out,
             "--epochs", str(args.epochs), "--device", args.device, "--seed", str(args.seed)]
    for flag, val, default in (("--size", args.size, 64), ("--batch", args.batch, 64), ("--lr", args.lr, 3e-3),
                               ("--split-seed", args.split_seed, 0), ("--threads", args.threads, 2),
                               ("--max-train", args.max_train, 0)):
        if val != default:
            parts += [flag, str(val)]
    if args.logo_augment:
        parts.append("--logo-augment")
    if args.adv_eps:
        parts += ["--adv-eps", f"{args.adv_eps:g}"]
    command = " ".join(shlex.quote(p) for p in parts)
    meta = train(args.data, args.arch, args.out, epochs=args.epochs, device=str(resolve_device(args.device)),
                 seed=args.seed, logo_augment=args.logo_augment, size=args.size, batch=args.batch, lr=args.lr,
                 split_seed=args.split_seed, command=command, adv_eps=args.adv_eps,
                 progress=args.progress, max_train=args.max_train)
    print(f"{args.out}: {meta['arch']} val_accuracy {meta['val_accuracy']:.4f} "
          f"({meta['n_val']} validation images, {meta['train_seconds']:.0f}s)")
    return 0
