"""Training of `fast`'s spread-design generator (strength standard / strong; `miadmark train-generator --design
spread`): the one-pass counterpart of the spread mark that `cloak` optimises per image.

Each step takes a batch of training images at the surrogates' resolution S and, for each, a lattice from a bank
of random keyed-like geometries (rendered at 224 px as the engine renders them, then area-downsampled to S:
what the surrogates see of a full-resolution mark), asks the generator for the mark's opacity, texture and the
cloak, composes through the same `spread.mark_layers` and `constraints.compose_mark` (the level's Budget, its
floors on the strokes) and maximises `cloak`'s loss (transfer._loss, capped per image) in expectation over the
mark filled from its surroundings (`p_fill`) and a third party's transforms (`p_eot`). Same U-Net as the box
design's generator (generator.py), same save format, `design: spread` and the level in its .json.
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

from . import constraints as C
from .ascent import fill_box
from .generator import WatermarkGenerator, save_generator, spread_maps
from .options import SpreadOptions
from .spread import Marks, draw_marks, mark_layers
from .train_generator import adversarial_step, training_data
from .transfer import avoid_mask

RENDER = 224  # the marks of the bank are drawn at this size, as on a typical image, then brought to S


def mark_bank(count: int, S: int, budget: C.Budget, opts: SpreadOptions, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(strokes, support) of `count` random lattices at S: (M, 1, S, S) in [0, 1] and (M, 1, S, S) in {0, 1}."""
    seeds = [int(s) for s in torch.randint(0, 2 ** 62, (count,), generator=torch.Generator().manual_seed(seed))]
    marks = draw_marks(count, RENDER, RENDER, torch.zeros(count, RENDER, RENDER, dtype=torch.bool), seeds, opts,
                       budget)
    strokes = F.interpolate(marks.strokes, size=(S, S), mode="area")
    support = F.adaptive_max_pool2d(marks.support[:, None].float(), (S, S))
    return strokes, support


def generated(net, xb, strokes, support, budget: C.Budget, opts: SpreadOptions) -> torch.Tensor:
    """The batch watermarked at S with the generator's maps (through constraints.compose_mark)."""
    n, S = len(xb), xb.shape[-1]
    alpha, texture, cloak = spread_maps(net, xb, support, budget)
    on = support[:, 0] > 0
    a, t = mark_layers(Marks(strokes, on, []), alpha, texture, (S, S), budget, opts.stroke_floor, 0.5)
    les = torch.zeros(n, S, S, dtype=torch.bool, device=xb.device)
    return C.compose_mark(xb, les, on, a, t, cloak, C.perceptual_mask(xb, on, budget), budget)


def train_spread(ens, xs: torch.Tensor, ys: torch.Tensor, strength: str, *, steps: int = 3000, max_minutes: float = 0,
                 batch: int = 32, lr: float = 2e-3, width: int = 16, seed: int = 0, p_fill: float = 0.3,
                 p_eot: float = 0.5, feature_weight: float = 0.5, cap: float = 6.0, bank: int = 512,
                 progress: bool = True) -> tuple[WatermarkGenerator, dict, tuple]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    budget, opts = C.level_budget(strength, {}, 1 / 9), SpreadOptions()
    strokes, support = (t.to(xs.device) for t in mark_bank(bank, ens.size, budget, opts, seed))
    net = WatermarkGenerator(ens.in_ch, ens.in_ch, width, ens.size).to(xs.device)
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    t0, done, running = time.time(), 0, 0.0
    net.train()
    for step in range(steps):
        frac = max(step / steps, (time.time() - t0) / (60 * max_minutes) if max_minutes else 0.0)
        if frac >= 1:
            break
        for g in optim.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.randint(len(xs), (batch,), generator=gen)
        mk = torch.randint(bank, (batch,), generator=gen)
        xb = xs[idx.to(xs.device)]
        with torch.no_grad():
            avoid = avoid_mask(ens.predict(xb)) | F.one_hot(ys[idx.to(ys.device)], len(ens.classes)).bool()
            f_clean = [f.detach() for f in ens.outputs(xb)[1]]
        out = generated(net, xb, strokes[mk], support[mk], budget, opts)
        value = adversarial_step(optim, ens, out, support[mk], avoid, f_clean, p_fill=p_fill, p_eot=p_eot,
                                 gen=gen, feature_weight=feature_weight, cap=cap)
        done += 1
        running = 0.95 * running + 0.05 * value if step else value
        if progress and step % 50 == 0:
            print(f"spread generator step {step + 1}/{steps} loss {running:.3f} ({time.time() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    net.eval()
    run = {"steps_done": done, "train_seconds": round(time.time() - t0, 1), "final_loss": round(running, 4),
           "batch": batch, "lr": lr, "p_fill": p_fill, "p_eot": p_eot, "loss_cap": cap, "bank": bank,
           "feature_weight": feature_weight}
    return net, run, (budget, opts)


def make_spread_generator(data: str, surrogates: list[str] | None, out: str, strength: str, *, steps: int = 3000,
                          max_minutes: float = 0, seed: int = 0, split_seed: int = 0, width: int = 16,
                          device: str = "cpu", batch: int = 32, lr: float = 2e-3, p_eot: float = 0.5,
                          command: str | None = None) -> dict:
    """Train on a dataset's training split (never validation) and save with the command and the surrogates'
    accuracy on 256 validation images: clean, generated, generated with the mark filled (white-box numbers)."""
    if C.level_of(strength).design != "spread":
        raise ValueError(f"strength {strength} is not a spread level")
    ds, ens, dev, (xs, y), (xv, yv) = training_data(data, surrogates, split_seed, seed, device)
    net, run, (budget, opts) = train_spread(ens, xs, y, strength, steps=steps, max_minutes=max_minutes,
                                            seed=seed, width=width, batch=batch, lr=lr, p_eot=p_eot)
    strokes, support = (t.to(dev) for t in mark_bank(len(xv), ens.size, budget, opts, seed + 1))
    with torch.no_grad():
        made = generated(net, xv, strokes, support, budget, opts)
        white_box = {"n": len(xv)}
        for name, imgs in (("clean", xv), ("generated", made), ("generated_mark_filled", fill_box(made, support))):
            white_box[name] = round(float((ens.predict(imgs).argmax(1) == yv).float().mean()), 4)
    meta = {"name": f"generator_{ds.name}_spread", "design": "spread", "strength": strength,
            "dataset": ds.name, "surrogates": ens.names, "in_size": ens.size, "classes": ds.classes,
            "pattern": opts.model_dump(), "seed": seed, "split_seed": split_seed, "n_train": len(xs),
            "steps": steps, "max_minutes": max_minutes, **run, "device": str(dev),
            "surrogate_accuracy_val": white_box, "command": command or " ".join(sys.argv)}
    save_generator(net.cpu(), meta, out)
    return meta
