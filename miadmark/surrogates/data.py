"""Datasets for surrogate training and evaluation, loaded once into cached uint8 tensors.

Supported layouts:
* brain_mri / skin_isic: class folders plus labels.csv (path, split, label, md5, ...). Rows that
  share an md5 (byte-identical duplicates) always land on the same side of the split; rows with
  copy_with_other_label=1 are dropped.
* chest_xray_224 / skin_ham10000: the same, with a split column "train" / "val" made by patient /
  lesion upstream: that split is used as is (no patient or lesion on both sides).
* chest_xray28: a MedMNIST-style npz (train/val images and labels).
Otherwise the validation split is a seeded hash of the md5 group, so it is stable across runs and machines.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("MIADMARK_CACHE", Path.home() / ".cache" / "miadmark"))


@dataclass
class Dataset:
    name: str
    classes: list[str]
    images: torch.Tensor  # (N, C, H, W) uint8, full stored resolution
    labels: torch.Tensor  # (N,) int64
    is_val: torch.Tensor  # (N,) bool
    paths: list[str]

    def split(self, val: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.is_val if val else ~self.is_val
        return self.images[idx], self.labels[idx]


def _val_of(key: str, seed: int, val_fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32 < val_fraction


def load_dataset(data: str | Path, *, seed: int = 0, val_fraction: float = 0.15) -> Dataset:
    """Load a dataset folder (or npz) with a seeded, duplicate-safe validation split. Cached."""
    data = Path(data).resolve()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(data).encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"{data.name}-{tag}-v2.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=False)
    else:
        blob = _read(data)
        torch.save(blob, cache)
    keys = blob["keys"]
    is_val = torch.tensor([_val_of(k, seed, val_fraction) for k in keys]) if blob["fixed_val"] is None \
        else blob["fixed_val"]
    return Dataset(name=data.name, classes=blob["classes"], images=blob["images"], labels=blob["labels"],
                   is_val=is_val, paths=blob["paths"])


def _read(data: Path) -> dict:
    if data.suffix == ".npz" or (data.is_dir() and list(data.glob("*.npz")) and not (data / "labels.csv").exists()):
        npz = data if data.suffix == ".npz" else sorted(data.glob("*.npz"))[0]
        d = np.load(npz)
        tr, va = d["train_images"], d["val_images"]
        imgs = np.concatenate([tr, va])
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        else:
            imgs = imgs.transpose(0, 3, 1, 2)
        labels = np.concatenate([d["train_labels"].ravel(), d["val_labels"].ravel()]).astype(np.int64)
        n_cls = int(labels.max()) + 1
        fixed = torch.zeros(len(imgs), dtype=torch.bool)
        fixed[len(tr):] = True
        return {"classes": [str(i) for i in range(n_cls)], "images": torch.from_numpy(np.ascontiguousarray(imgs)),
                "labels": torch.from_numpy(labels), "keys": [str(i) for i in range(len(imgs))],
                "paths": [f"{npz.name}#{i}" for i in range(len(imgs))], "fixed_val": fixed}
    channels = 3 if "isic" in data.name or "skin" in data.name else 1
    from PIL import Image

    rows = []
    with open(data / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("copy_with_other_label", "0") == "1":
                continue
            if row.get("split", "Training") not in ("Training", "Train", "train", "val"):
                continue  # held-out test splits stay untouched
            rows.append(row)
    upstream_val = any(r.get("split") == "val" for r in rows)  # split by patient / lesion upstream
    classes = sorted({r["label"] for r in rows})
    sizes = set()
    imgs = []
    for r in rows:
        with Image.open(data / r["path"]) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            sizes.add(im.size)
            if im.size != (224, 224) and channels == 1:
                im = im.resize((224, 224), Image.BILINEAR)
            a = np.asarray(im)
        imgs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    if len({i.shape for i in imgs}) > 1:
        raise ValueError(f"{data}: images of several sizes")
    log.info("%s: %d images, %d classes", data.name, len(imgs), len(classes))
    return {"classes": classes, "images": torch.from_numpy(np.stack(imgs)),
            "labels": torch.tensor([classes.index(r["label"]) for r in rows]),
            "keys": [r.get("md5") or r["path"] for r in rows], "paths": [r["path"] for r in rows],
            "fixed_val": torch.tensor([r["split"] == "val" for r in rows]) if upstream_val else None}


def to_model_input(images_u8: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float (N,channels,size,size) in [0,1], antialiased like the engine does."""
    x = images_u8.float() / 255.0
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)
