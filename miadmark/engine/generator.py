"""The one-pass watermark generator of profile `fast`: a small U-Net at the surrogates' resolution S that maps
an image and its logo box to the watermark's maps (the logo's alpha and texture, the cloak), composed under
the same constraints as `cloak` (constraints.py).

Input (N, in_ch + 1, S, S): the image as the surrogates see it, plus the box (1 inside). Output (N, 2 + c, S, S):
the logo's opacity in [alpha_min, alpha_cap] and texture in [stroke_min, 1] (read inside the box), the cloak
in [-1, 1] (c = 1, or 3 for colour ensembles; the budget and the perceptual mask scale it in `compose`).

Weights: one file per modality family, chosen like the surrogates (surrogates_for_modality): the committed
`weights/generator_<dataset>.pt` whose .json names exactly the ensemble's surrogates, made by
`miadmark train-generator` (the .json holds the exact command). fp16 on disk, fp32 in use.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MiadmarkError
from . import constraints as C

_CACHE: dict = {}
_LOCK = threading.Lock()


class GeneratorMissingError(MiadmarkError):
    """No generator weights for an ensemble: `fast` cannot watermark (and never passes an image unprotected)."""


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU())


class WatermarkGenerator(nn.Module):
    """A small U-Net working at S/2, S/4 and S/8 (widths w, 2w, 4w; the deepest level sees the whole image),
    its output upsampled (smooth) back to S: cheap on a CPU, and smooth maps survive JPEG and resizing."""

    def __init__(self, in_ch: int = 1, cloak_ch: int = 1, width: int = 16, universal: int = 0):
        super().__init__()
        self.config = {"in_ch": in_ch, "cloak_ch": cloak_ch, "width": width, "universal": universal}
        # universal > 0: a learned map at that size (the surrogates' S) added to every output, the image-independent
        # part of the watermark (a universal perturbation, which the convolutions alone learn slowly)
        self.universal = nn.Parameter(torch.zeros(1, 2 + cloak_ch, universal, universal)) if universal else None
        w = width
        self.e1, self.e2, self.e3 = _block(in_ch + 1, w, 2), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)
        self.d2, self.d1 = _block(4 * w + 2 * w, 2 * w), _block(2 * w + w, w)
        self.out = nn.Conv2d(w, 2 + cloak_ch, 1)
        nn.init.zeros_(self.out.weight)  # starts at mid opacity, mid texture, no cloak
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")  # S need not be a multiple of 8
        f1 = self.e1(x)
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        g2 = self.d2(torch.cat([_up2(f3), f2], 1))
        g1 = self.d1(torch.cat([_up2(g2), f1], 1))
        out = _up2(self.out(g1))[..., :h, :w]
        if self.universal is not None:
            u = self.universal
            out = out + (u if u.shape[-2:] == (h, w) else F.interpolate(u, size=(h, w), mode="bilinear",
                                                                         align_corners=False))
        return out


def _up2(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)


def watermark_maps(net: WatermarkGenerator, xs: torch.Tensor, box_low: torch.Tensor, budget: C.Budget,
                   alpha_min: float = C.ALPHA_MIN, stroke_min: float = C.STROKE_MIN
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, texture, cloak), each (N, ., S, S), from images xs (N, in_ch, S, S) and boxes box_low (N, 1, S, S)."""
    raw = net(torch.cat([xs, box_low], 1))
    cap = budget.alpha_cap
    a_min = min(cap, alpha_min)
    alpha = a_min + (cap - a_min) * torch.sigmoid(raw[:, :1])
    texture = stroke_min + (1 - stroke_min) * torch.sigmoid(raw[:, 1:2])
    return alpha, texture, torch.tanh(raw[:, 2:])


def spread_maps(net: WatermarkGenerator, xs: torch.Tensor, mark_low: torch.Tensor, budget: C.Budget
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spread design's (alpha <= cap, texture, cloak), each (N, ., S, S), from images xs (N, in_ch, S, S) and
    the mark's pixels at S, mark_low (N, 1, S, S); spread.mark_layers puts the strokes' floors on them."""
    raw = net(torch.cat([xs, mark_low], 1))
    return budget.alpha_cap * torch.sigmoid(raw[:, :1]), torch.sigmoid(raw[:, 1:2]), torch.tanh(raw[:, 2:])


def compose_maps(images: torch.Tensor, lesion: torch.Tensor, boxes: list[list[int]], boxes_low: list[list[int]],
                 shape: torch.Tensor, alpha: torch.Tensor, texture: torch.Tensor, cloak: torch.Tensor,
                 cloak_mask: torch.Tensor, budget: C.Budget) -> torch.Tensor:
    """The watermarked images: each image's box cut from the generator's maps at S (boxes_low), pasted into its
    full-resolution box (boxes) through constraints.compose; shape (bh, bw) the logo's shape at full resolution.
    Used at inference (full resolution) and in training (at S, where boxes == boxes_low)."""
    h, w = images.shape[-2:]
    a = torch.stack([alpha[i, :, y0:y1, x0:x1] for i, (y0, x0, y1, x1) in enumerate(boxes_low)])
    t = torch.stack([texture[i, :, y0:y1, x0:x1] for i, (y0, x0, y1, x1) in enumerate(boxes_low)])
    y0, x0, y1, x1 = boxes[0]
    return C.compose(images, lesion, boxes, *C.logo_layers(shape, a, t, (y1 - y0, x1 - x0)),
                     C.upsample(cloak, (h, w)), cloak_mask, budget)


def save_generator(net: WatermarkGenerator, meta: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.half() for k, v in net.state_dict().items()}
    meta = {**meta, **net.config}
    torch.save({"meta": meta, "state_dict": sd}, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def generator_path(surrogates: list[str], design: str = "box") -> Path:
    """The committed generator of a mark design ("box"; "spread": the strength levels' lattice; a file without
    `design` is a box one) trained against exactly these surrogates; GeneratorMissingError if none."""
    from ..surrogates import WEIGHTS_DIR

    for meta_path in sorted(WEIGHTS_DIR.glob("generator_*.json")):
        meta = json.loads(meta_path.read_text())
        if (sorted(meta.get("surrogates", [])) == sorted(surrogates) and meta.get("design", "box") == design
                and meta_path.with_suffix(".pt").exists()):
            return meta_path.with_suffix(".pt")
    raise GeneratorMissingError(
        f"no {'' if design == 'box' else design + ' '}generator weights for surrogates {', '.join(surrogates)} in "
        f"{WEIGHTS_DIR} (profile fast needs "
        "one: miadmark train-generator --data DATASET --out weights/generator_DATASET.pt)")


def load_generator(path: str | Path, device: torch.device) -> WatermarkGenerator:
    """The generator in eval mode (deterministic), fp32, cached per file and device."""
    path = Path(path)
    if not path.is_file():
        raise GeneratorMissingError(f"{path}: generator weights not found (profile fast cannot watermark)")
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        net = WatermarkGenerator(int(meta["in_ch"]), int(meta["cloak_ch"]), int(meta["width"]),
                                 int(meta.get("universal", 0)))
        net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    except (KeyError, TypeError, RuntimeError, ValueError, OSError, pickle.UnpicklingError, EOFError) as exc:
        raise GeneratorMissingError(f"{path}: not a generator weights file ({type(exc).__name__})") from exc
    net.meta = {**meta, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # which weights made a record
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    with _LOCK:
        _CACHE[key] = net
    return net
