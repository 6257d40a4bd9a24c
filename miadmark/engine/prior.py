"""Universal starting points for `transfer`: logo maps optimized once over a training set.

A per-image attack from a plain logo has 30 steps to find a perturbation and tends to find one that
only fools the surrogates. A *universal* logo (Brown et al., "Adversarial Patch", 2017), optimized
over thousands of training images at random lesion-free-like placements and under the third-party
transforms, captures what the models read as a class (a meningioma-like blob, say) and transfers
better; per-image steps then refine it. One universal map set per target class plus one untargeted;
the engine queries each (with each placement) and starts from the most damaging.

`miadmark train-prior` makes the file (weights/<dataset>_prior.pt + .json with the command).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .adversarial import AdversarialEngine, Layout
from .eot import random_transform

log = logging.getLogger(__name__)

# the logo limits: the transfer engine's defaults, which the prior obeys too
A_MIN, A_MAX, P_MAX, S_MIN, CONTRAST = 0.35, 0.75, 0.8, 0.4, 0.15


def clamp_maps(a1, t1, a2, t2, a_min=A_MIN, a_max=A_MAX, p_max=P_MAX, s_min=S_MIN, contrast=CONTRAST):
    """Keep the maps a visible logo: bright strokes of bounded alpha over a darker, bounded plate."""
    a1.clamp_(a_min, a_max)
    t1.clamp_(s_min, 1.0)
    a2.clamp_(0.0, p_max)
    t2.copy_(torch.minimum(t2.clamp(0.0, 1.0), (t1 - contrast).clamp_min(0.0)))


def candidate_boxes(xs: torch.Tensor, hs: int, ws: int, keep: int = 8, grid: int = 7, fg_thr: float = 0.08):
    """Per image the `keep` 7x7-grid box positions most covered by anatomy (as the engine places)."""
    S = xs.shape[-1]
    gy = torch.linspace(0, S - hs, grid).round().long()
    gx = torch.linspace(0, S - ws, grid).round().long()
    cy, cx = (t.flatten() for t in torch.meshgrid(gy, gx, indexing="ij"))
    fgm = (xs.mean(1) > fg_thr).float()
    fg = torch.stack([fgm[:, y:y + hs, x:x + ws].mean((1, 2)) for y, x in zip(cy.tolist(), cx.tolist())], 1)
    return cy, cx, fg.argsort(dim=1, descending=True, stable=True)[:, :keep]


def train_prior(ens, xs: torch.Tensor, labels: torch.Tensor, logo_mask: torch.Tensor, *, steps: int = 400,
                batch: int = 32, lr: float = 0.03, seed: int = 0, param_scale: float = 0.5,
                targets: list[int | None] | None = None, progress: bool = True) -> dict:
    """Universal maps (a1, t1, a2, t2) per target class and one untargeted, at the surrogates' scale.

    xs (N, C, S, S) training images in [0, 1] at the surrogates' size; logo_mask (hs, ws) the logo at
    that scale (its box is 1/3 of the side for the default 1/9 area). targets: class indices and/or
    None (untargeted); default all classes and None."""
    gen = torch.Generator().manual_seed(seed)
    hs, ws = logo_mask.shape
    hp, wp = max(2, round(hs * param_scale)), max(2, round(ws * param_scale))
    cy, cx, top = candidate_boxes(xs, hs, ws)
    m = logo_mask.to(xs.device)
    n_cls = ens.models[0].num_classes
    priors = {}
    t0 = time.time()

    def one(t):  # the same maps for every image of the batch
        return t.expand(batch, *t.shape[1:])

    def up(t):
        return F.interpolate(t[None] if t.dim() == 3 else t[None, None], size=(hs, ws), mode="bilinear",
                             align_corners=False)[0]

    for target in ([*range(n_cls), None] if targets is None else targets):
        tex = F.interpolate(m[None, None], size=(hp, wp), mode="bilinear", antialias=True, align_corners=False)[0]
        a1 = torch.full((hp, wp), A_MAX)
        t1 = tex.clamp(min=S_MIN).clone()
        a2 = torch.full((hp, wp), 0.4)
        t2 = torch.full((1, hp, wp), 0.3)
        params = [a1, t1, a2, t2]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        pool = torch.arange(len(xs)) if target is None else (labels != target).nonzero()[:, 0]
        for step in range(steps):
            idx = pool[torch.randint(len(pool), (batch,), generator=gen)]
            xb = xs[idx]
            pos = top[idx, torch.randint(top.shape[1], (batch,), generator=gen)]
            lays = [Layout(0, 0, 0, 0, int(cy[k]), int(cx[k]), hs, ws) for k in pos.tolist()]
            comp = AdversarialEngine.paste_low(xb, lays, m, one(up(a1)), one(up(t1)[None]), one(up(a2)),
                                               one(up(t2)[None]))
            xa = random_transform(comp.clamp(0, 1), gen)
            logits, _ = ens.outputs(xa)
            if target is None:  # untargeted: push the true class down, capped so no model dominates
                loss = -sum(F.cross_entropy(z, labels[idx]).clamp(max=4.0) for z in logits)
            else:
                tt = torch.full((batch,), target)
                loss = sum(F.cross_entropy(z, tt) for z in logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                clamp_maps(a1, t1, a2, t2)
            if progress and (step % 100 == 0 or step == steps - 1):
                print(f"prior target={target} step {step + 1}/{steps} loss {float(loss.detach()):.3f} "
                      f"({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
        priors[str(target)] = [p.detach().clone() for p in params]
    return {"priors": priors, "param_size": [hp, wp], "box_size": [hs, ws]}


def fit_prior(maps: list[torch.Tensor], n: int, hp: int, wp: int, device) -> tuple[torch.Tensor, ...]:
    """One prior's maps resampled to an image's parameter grid and expanded over a batch of n."""
    def fit(t):
        t = t if t.dim() == 3 else t[None]
        return F.interpolate(t[None].float(), size=(hp, wp), mode="bilinear", align_corners=False)[0].to(device)

    a1, t1, a2, t2 = maps
    return (fit(a1)[0].expand(n, hp, wp), fit(t1).expand(n, 1, hp, wp),
            fit(a2)[0].expand(n, hp, wp), fit(t2).expand(n, 1, hp, wp))


def load_prior(path: str | Path) -> dict:
    return _load_prior(str(path))


@lru_cache(maxsize=8)  # read once per file, not once per batch
def _load_prior(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def default_prior(surrogate_names: list[str]) -> Path | None:
    """The committed prior made for exactly these surrogates, if any."""
    return _default_prior(tuple(sorted(surrogate_names)))


@lru_cache(maxsize=16)  # read once per ensemble, not once per batch
def _default_prior(names: tuple[str, ...]) -> Path | None:
    from ..surrogates import WEIGHTS_DIR

    for path in sorted(WEIGHTS_DIR.glob("*_prior.json")):
        meta = json.loads(path.read_text())
        if tuple(sorted(meta.get("surrogates", []))) == names and path.with_suffix(".pt").exists():
            return path.with_suffix(".pt")
    return None


def save_prior(blob: dict, meta: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**blob, "meta": meta}, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def make_prior(data: str, surrogates: list[str] | None, out: str, *, steps: int = 400, seed: int = 0,
               split_seed: int = 0, max_area_fraction: float = 1 / 9, targets: list[int | None] | None = None,
               command: str | None = None) -> dict:
    """Train a prior on a dataset's training split (never its validation split) and save it."""
    from ..surrogates.data import load_dataset, to_model_input
    from .ensemble import Ensemble
    from .logo import box_size, logo_tensors

    ens = Ensemble.get(surrogates, torch.device("cpu"))
    ds = load_dataset(data, seed=split_seed)
    x_u8, y = ds.split(val=False)
    h, w = x_u8.shape[-2:]
    xs = to_model_input(x_u8, ens.size, ens.in_ch)
    bh, bw = box_size(h, w, max_area_fraction)
    hs, ws = max(2, math.floor(bh * ens.size / h)), max(2, math.floor(bw * ens.size / w))
    m, _, logo_id = logo_tensors(None, bh, bw, 1, torch.device("cpu"))
    m = F.interpolate(m[None, None], size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    t0 = time.time()
    blob = train_prior(ens, xs, y, m, steps=steps, seed=seed, targets=targets)
    meta = {"dataset": ds.name, "surrogates": ens.names, "classes": ds.classes, "logo": logo_id,
            "steps": steps, "seed": seed, "split_seed": split_seed, "n_train": len(xs),
            "train_seconds": round(time.time() - t0, 1), "command": command or " ".join(sys.argv)}
    save_prior(blob, meta, out)
    return meta
