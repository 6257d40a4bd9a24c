"""Training of the `fast` profile's generator (generator.py) against a modality's surrogate ensemble.

The generator learns what `cloak` optimizes per image, under the same constraints: each step takes a batch
of training images at the surrogates' resolution, puts the logo box at a random one of the placements the
engine would choose (the grid positions most covered by anatomy), composes through the same
`constraints.compose` (same Budget, same perceptual mask) and maximizes cloak's loss (`transfer._loss`: off
the ensemble's prediction, every plausible class and, known here, the true class; pooled features off the
clean ones), capped per image so that fooled images stop dominating, in expectation over what a third party
does: the box painted over from its surroundings (`ascent.fill_box`, half of the steps), then JPEG q50-95,
resizing, blur, input diversity and 8-bit rounding (`eot.random_transform`).

The committed generators were made on this 2-core CPU, one thread, niced (each .json holds the command):

    OMP_NUM_THREADS=1 nice -n 15 miadmark train-generator --data ../shared/data/DATASET \
        --out miadmark/surrogates/weights/generator_DATASET.pt --steps 3000 --max-minutes 13
    for DATASET in brain_mri (64 px surrogates) and skin_ham10000 (96 px surrogates); chest_xray_224 (96 px)
    adds --batch 16 --lr 0.006 --p-eot 0.2 (the transforms on 20 % of the steps: with them on every step it
    did not learn in 13 minutes, docs/evaluation/fast.md)

(the time bound ends each run first: 1397 / 1218 / 569 steps; steps_done in each .json).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import torch
import torch.nn.functional as F

from . import constraints as C
from .ascent import fill_box
from .eot import random_transform
from .generator import WatermarkGenerator, compose_maps, save_generator, watermark_maps
from .logo import box_size, logo_downsampled
from .prior import candidate_boxes
from .transfer import _loss, avoid_mask

log = logging.getLogger(__name__)


def logo_shape_low(hs: int, ws: int) -> torch.Tensor:
    """The default logo's shape at the surrogates' scale, area-downsampled from 4x as the engine's `logo_low`
    does from the full-resolution box (there is no full-resolution image in training)."""
    return logo_downsampled(None, (hs, ws), (4 * hs, 4 * ws), torch.device("cpu"))[0]


def generated(net, ens, xb: torch.Tensor, boxes_low: list[list[int]], shape: torch.Tensor, budget: C.Budget
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The watermarked batch at S (through constraints.compose) and its box mask (N, 1, S, S)."""
    n, S = len(xb), ens.size
    box_low = C.box_mask(n, S, S, boxes_low, xb.device)[:, None].float()
    alpha, texture, cloak = watermark_maps(net, xb, box_low, budget)
    les = torch.zeros(n, S, S, dtype=torch.bool, device=xb.device)
    cmask = C.perceptual_mask(xb, box_low[:, 0].bool(), budget)
    return compose_maps(xb, les, boxes_low, boxes_low, shape, alpha, texture, cloak, cmask, budget), box_low


def accuracy_under(net, ens, xs, ys, cy, cx, top, hs, ws, shape, budget, fill: bool) -> float:
    """The ensemble's accuracy on xs watermarked at each image's first placement (optionally box filled)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xs), 64):
            xb, k = xs[i:i + 64], top[i:i + 64, 0]
            boxes = [[int(cy[j]), int(cx[j]), int(cy[j]) + hs, int(cx[j]) + ws] for j in k.tolist()]
            out, box_low = generated(net, ens, xb, boxes, shape, budget)
            if fill:
                out = fill_box(out, box_low)
            correct += int((ens.predict(out).argmax(1) == ys[i:i + 64]).sum())
    return correct / max(1, len(xs))


def adversarial_step(opt, ens, out: torch.Tensor, fill_region, avoid: torch.Tensor, f_clean: list, *,
                     p_fill: float, p_eot: float, gen: torch.Generator, feature_weight: float, cap: float) -> float:
    """One generator update with cloak's capped loss, in expectation over the mark filled from its surroundings
    (`fill_region`: ascent.fill_box's region, with probability p_fill) and the third party's transforms
    (p_eot). Returns the loss (higher: the surrogates misread more)."""
    xa = out
    if float(torch.rand(1, generator=gen)) < p_fill:
        xa = fill_box(xa, fill_region)
    if float(torch.rand(1, generator=gen)) < p_eot:
        xa = random_transform(xa.clamp(0, 1), gen)
    loss = -_loss(ens, xa, avoid, f_clean, feature_weight).clamp(max=cap).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(-loss.detach())


def train_generator(ens, xs: torch.Tensor, ys: torch.Tensor, *, steps: int = 3000, max_minutes: float = 0,
                    batch: int = 32, lr: float = 2e-3, width: int = 16, seed: int = 0, p_fill: float = 0.5,
                    p_eot: float = 1.0, feature_weight: float = 0.5, cap: float = 6.0, max_area_fraction: float = 1 / 9,
                    universal: bool = True, progress: bool = True) -> tuple[WatermarkGenerator, dict]:
    """A generator for ensemble `ens` trained on xs (N, in_ch, S, S) in [0, 1] with labels ys; stops after
    `steps` or `max_minutes` (0: no limit). Returns the net and what the run did."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    S = ens.size
    budget = C.Budget(max_area_fraction=max_area_fraction)
    bh, bw = box_size(S, S, max_area_fraction)
    hs, ws = max(2, math.floor(bh)), max(2, math.floor(bw))
    cy, cx, top = candidate_boxes(xs, hs, ws)
    shape = logo_shape_low(hs, ws)
    net = WatermarkGenerator(ens.in_ch, ens.in_ch, width, S if universal else 0).to(xs.device)
    shape = shape.to(xs.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0, done, running = time.time(), 0, 0.0
    net.train()
    for step in range(steps):
        progress_ = max(step / steps, (time.time() - t0) / (60 * max_minutes) if max_minutes else 0.0)
        if progress_ >= 1:
            break
        for g in opt.param_groups:  # cosine decay over the steps or the minutes, whichever ends first
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress_))
        idx = torch.randint(len(xs), (batch,), generator=gen)
        xb = xs[idx.to(xs.device)]
        pos = top[idx, torch.randint(top.shape[1], (batch,), generator=gen)]
        boxes = [[int(cy[k]), int(cx[k]), int(cy[k]) + hs, int(cx[k]) + ws] for k in pos.tolist()]
        with torch.no_grad():
            avoid = avoid_mask(ens.predict(xb)) | F.one_hot(ys[idx.to(ys.device)], len(ens.classes)).bool()
            f_clean = [f.detach() for f in ens.outputs(xb)[1]]
        out, box_low = generated(net, ens, xb, boxes, shape, budget)
        value = adversarial_step(opt, ens, out, box_low, avoid, f_clean, p_fill=p_fill, p_eot=p_eot, gen=gen,
                                 feature_weight=feature_weight, cap=cap)
        done += 1
        running = 0.95 * running + 0.05 * value if step else value
        if progress and (step % 50 == 0 or step == steps - 1):
            print(f"generator step {step + 1}/{steps} loss {running:.3f} ({time.time() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    net.eval()
    return net, {"steps_done": done, "train_seconds": round(time.time() - t0, 1), "final_loss": round(running, 4),
                 "box_low": [hs, ws], "batch": batch, "lr": lr, "p_fill": p_fill, "p_eot": p_eot,
                 "universal": universal, "loss_cap": cap,
                 "feature_weight": feature_weight}


def training_data(data: str, surrogates: list[str] | None, split_seed: int, seed: int, device: str):
    """What a generator trains and is checked on: (dataset, its surrogates' ensemble, device, the training split
    at the surrogates' input (x, y), 256 validation images chosen by `seed` (x, y), never trained on)."""
    from ..surrogates import DATASET_SURROGATES
    from ..surrogates.data import load_dataset, to_model_input
    from .base import resolve_device
    from .ensemble import Ensemble

    dev = resolve_device(device)
    ds = load_dataset(data, seed=split_seed)
    names = surrogates or DATASET_SURROGATES.get(ds.name)
    if not names:
        raise ValueError(f"{data}: no default surrogates for dataset {ds.name!r}; name them with --surrogates")
    ens = Ensemble.get(list(names), dev)
    x_u8, y = ds.split(val=False)
    xv_u8, yv = ds.split(val=True)
    keep = torch.randperm(len(xv_u8), generator=torch.Generator().manual_seed(seed))[:256]
    return ds, ens, dev, (to_model_input(x_u8, ens.size, ens.in_ch).to(dev), y.to(dev)), \
        (to_model_input(xv_u8[keep], ens.size, ens.in_ch).to(dev), yv[keep].to(dev))


def make_generator(data: str, surrogates: list[str] | None, out: str, *, steps: int = 3000, max_minutes: float = 0,
                   seed: int = 0, split_seed: int = 0, width: int = 16, device: str = "cpu", batch: int = 32,
                   lr: float = 2e-3, p_eot: float = 1.0, command: str | None = None) -> dict:
    """Train a generator on a dataset's training split (never its validation split) and save it with the
    command and the ensemble's accuracy on 256 validation images: clean, watermarked, watermarked with the box
    filled (white-box numbers: what the surrogates see, not a black-box result)."""
    from .logo import DEFAULT_LOGO_ID

    ds, ens, dev, (xs, y), (xv, yv) = training_data(data, surrogates, split_seed, seed, device)
    net, run = train_generator(ens, xs, y, steps=steps, max_minutes=max_minutes, seed=seed, width=width,
                               batch=batch, lr=lr, p_eot=p_eot)
    hs, ws = run["box_low"]
    cy, cx, top = candidate_boxes(xv, hs, ws)
    shape, budget = logo_shape_low(hs, ws).to(dev), C.Budget()
    with torch.no_grad():
        clean = float((ens.predict(xv).argmax(1) == yv).float().mean())
    white_box = {"n": len(xv), "clean": round(clean, 4),
                 "generated": round(accuracy_under(net, ens, xv, yv, cy, cx, top, hs, ws, shape, budget,
                                                   False), 4),
                 "generated_box_filled": round(accuracy_under(net, ens, xv, yv, cy, cx, top, hs, ws, shape, budget,
                                                              True), 4)}
    meta = {"name": f"generator_{ds.name}", "dataset": ds.name, "surrogates": ens.names, "in_size": ens.size,
            "classes": ds.classes, "logo": DEFAULT_LOGO_ID, "seed": seed, "split_seed": split_seed,
            "n_train": len(xs), "steps": steps, "max_minutes": max_minutes, **run, "device": str(dev),
            "surrogate_accuracy_val": white_box, "command": command or " ".join(sys.argv)}
    save_generator(net.cpu(), meta, out)
    return meta
