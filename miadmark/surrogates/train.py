"""Train a surrogate (or black-box evaluation) classifier from scratch on CPU or GPU."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import augment_batch
from .data import load_dataset, to_model_input
from .models import build

log = logging.getLogger(__name__)


def predictions(model, x: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch].to(device)).argmax(1).cpu() for i in range(0, len(x), batch)])


def evaluate_accuracy(model, x: torch.Tensor, y: torch.Tensor, device, batch: int = 256) -> float:
    return float((predictions(model, x, device, batch) == y).float().mean()) if len(x) else 0.0


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-class recall over the classes present (the skin data's metric: nv is most of it)."""
    recalls = [float((pred[y == c] == c).float().mean()) for c in y.unique()]
    return sum(recalls) / max(1, len(recalls))


def train(data: str, arch: str, out: str, *, epochs: int = 12, device: str = "cpu", seed: int = 0,
          logo_augment: bool = False, size: int = 64, batch: int = 64, lr: float = 3e-3,
          split_seed: int = 0, progress: bool = True, command: str | None = None, adv_eps: float = 0.0,
          max_train: int = 0) -> dict:
    """adv_eps > 0 (grey levels of 255): fast adversarial training (FGSM from a random start, Wong et al.
    2020) at that L-inf budget. Slightly robust surrogates give perturbations that transfer better
    (Springer et al., "A little robustness goes a long way", 2021)."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    ds = load_dataset(data, seed=split_seed)
    in_ch = ds.images.shape[1]
    xtr_u8, ytr = ds.split(val=False)
    if 0 < max_train < len(xtr_u8):  # a seeded subset of the training split (CPU time)
        keep = torch.randperm(len(xtr_u8), generator=torch.Generator().manual_seed(seed))[:max_train].sort().values
        xtr_u8, ytr = xtr_u8[keep], ytr[keep]
    xva_u8, yva = ds.split(val=True)
    xtr = to_model_input(xtr_u8, size, in_ch)
    xva = to_model_input(xva_u8, size, in_ch)
    model = build(arch, in_ch, len(ds.classes), size).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(len(xtr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(ytr, minlength=len(ds.classes)).float()
    weight = (counts.sum() / counts / len(counts)).to(dev)
    t0 = time.time()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    best = (-1.0, None)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        it = range(0, len(xtr), batch)
        if progress and tqdm is not None:
            it = tqdm(it, desc=f"{arch} epoch {ep + 1}/{epochs}", file=sys.stderr)  # one line per epoch stays
        tot = 0.0
        for i in it:
            idx = perm[i:i + batch]
            xb = augment_batch(xtr[idx], gen, logo=logo_augment).to(dev)
            yb = ytr[idx].to(dev)
            if adv_eps > 0:
                xb = fgsm_rs(model, xb, yb, adv_eps / 255.0, gen)
            loss = F.cross_entropy(model(xb), yb, weight=weight, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        pred = predictions(model, xva, dev)
        acc, bal = float((pred == yva).float().mean()), balanced_accuracy(pred, yva)
        log.info("%s epoch %d/%d loss %.4f val_acc %.4f balanced %.4f (%.0fs)", arch, ep + 1, epochs,
                 tot / len(xtr), acc, bal, time.time() - t0)
        if bal >= best[0] and ep >= epochs // 2:  # balanced: chest and skin data are imbalanced
            best = (bal, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best[1] is not None:
        model.load_state_dict(best[1])
    pred = predictions(model, xva, dev)
    acc = float((pred == yva).float().mean())
    meta = {"arch": arch, "in_ch": in_ch, "in_size": size, "classes": ds.classes, "dataset": ds.name,
            "val_accuracy": round(acc, 4), "val_balanced_accuracy": round(balanced_accuracy(pred, yva), 4),
            "n_train": len(xtr), "n_val": len(xva), "epochs": epochs, "seed": seed, "split_seed": split_seed,
            "logo_augment": logo_augment, "adv_eps": adv_eps, "max_train": max_train,
            "train_seconds": round(time.time() - t0, 1), "device": str(dev),
            "command": command or " ".join(sys.argv)}
    save(model, meta, out)
    return meta


def fgsm_rs(model, x: torch.Tensor, y: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """One FGSM step of 1.25 eps from a uniform random start, projected to the eps ball."""
    delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps).to(x.device).requires_grad_(True)
    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()
    return (x + delta).clamp(0, 1)


def save(model, meta: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"meta": meta, "state_dict": sd}, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def load(path: str | Path, device: torch.device | str = "cpu"):
    blob = torch.load(path, map_location="cpu", weights_only=False)
    meta = blob["meta"]
    model = build(meta["arch"], meta["in_ch"], len(meta["classes"]), meta["in_size"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.meta = meta
    return model
