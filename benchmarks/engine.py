"""Engine throughput: images/s of `cloak` (the default), `transfer` (the previous default) and `paper`
at batch 1, 16, 64 against plain PGD-10 (L-inf 8/255 on the same surrogate ensemble, gradients through
the same resize) in the same run; `cloak_vs_transfer` is the default's speed relative to the previous one.

    .venv/bin/python benchmarks/engine.py [--device auto] [--size 224] [--batches 1 16 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miadmark.engine import Profile, get_engine  # noqa: E402
from miadmark.engine.ensemble import Ensemble  # noqa: E402
from miadmark.machine import cpu_model  # noqa: E402


def images(n: int, size: int) -> torch.Tensor:
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri"
    if data.exists():
        from miadmark.surrogates.data import load_dataset

        ds = load_dataset(data)
        x = ds.split(val=True)[0][:n].float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.clamp(0, 1)
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def pgd10(ens: Ensemble, x: torch.Tensor, eps: float = 8 / 255, steps: int = 10) -> torch.Tensor:
    with torch.no_grad():
        y = ens.predict(ens.prep(x)).argmax(1)
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logits, _ = ens.outputs(ens.prep(adv))
        loss = F.cross_entropy(torch.stack(logits).mean(0), y)
        (g,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = (x + (adv + eps / 4 * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def timed(fn, x, device, repeat: int) -> float:
    fn(x[:1])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeat * len(x) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64])
    ap.add_argument("--engines", nargs="*", default=["cloak", "transfer", "paper"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None, "image_size": args.size}
    print(json.dumps(info))
    engines = {name: get_engine(Profile(name=name), dev) for name in args.engines}
    ens = next(iter(engines.values())).ensemble
    print(f"surrogates: {', '.join(ens.names)} at {ens.size}x{ens.size}")
    x_all = images(max(args.batches), args.size).to(dev)
    rows = []
    for b in args.batches:
        x = x_all[:b]
        pgd = timed(lambda t: pgd10(ens, t), x, dev, args.repeat)
        row = {"batch": b, "pgd10_img_s": round(pgd, 2)}
        for name, eng in engines.items():
            r = timed(lambda t: eng.watermark(t, None, []), x, dev, args.repeat)
            row[f"{name}_img_s"] = round(r, 2)
            row[f"{name}_vs_pgd10"] = round(r / pgd, 3)
        if "cloak_img_s" in row and "transfer_img_s" in row:
            row["cloak_vs_transfer"] = round(row["cloak_img_s"] / row["transfer_img_s"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
