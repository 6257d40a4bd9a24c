"""Training augmentation, including the random-logo augmentation of a careful third party."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

_BANK: list[torch.Tensor] = []


def _shape_bank(n: int = 48, size: int = 64) -> list[torch.Tensor]:
    """Random logo shapes (polygons, rings, crosses, bars, the project's own shield) as masks in [0, 1]."""
    if _BANK:
        return _BANK
    from ..engine.logo import _default_logo_rgba

    rng = np.random.default_rng(1234)
    shield = Image.fromarray(_default_logo_rgba()[..., 3]).resize((size, size), Image.BILINEAR)
    _BANK.append(torch.from_numpy(np.asarray(shield, dtype=np.float32) / 255))
    for _ in range(n - 1):
        im = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(im)
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(0, 5)
            w = int(rng.integers(2, 8))
            a, b = sorted(rng.uniform(0, size, 2)), sorted(rng.uniform(0, size, 2))
            box = [a[0], b[0], max(a[1], a[0] + 8), max(b[1], b[0] + 8)]
            if kind == 0:
                d.ellipse(box, outline=255, width=w)
            elif kind == 1:
                d.rectangle(box, fill=255)
            elif kind == 2:
                pts = [tuple(rng.uniform(0, size, 2)) for _ in range(rng.integers(3, 7))]
                d.polygon(pts, fill=255 if rng.random() < 0.5 else None, outline=255, width=w)
            elif kind == 3:
                d.line([tuple(rng.uniform(0, size, 2)) for _ in range(3)], fill=255, width=w)
            else:
                d.ellipse(box, fill=255)
        _BANK.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255))
    return _BANK


def random_logos(x: torch.Tensor, gen: torch.Generator, p: float = 0.7) -> torch.Tensor:
    """Paste random logos (box up to 1/9 of the image, alpha 0.3-1, flat or smooth-noise texture)."""
    n, c, h, w = x.shape
    bank = _shape_bank()
    out = x.clone()
    for i in range(n):
        if float(torch.rand(1, generator=gen)) > p:
            continue
        frac = float(torch.empty(1).uniform_(0.02, 1 / 9, generator=gen))
        bh = bw = max(4, int(round(h * math.sqrt(frac))))
        y = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
        xx = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
        m = bank[int(torch.randint(len(bank), (1,), generator=gen))]
        m = F.interpolate(m[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0]
        alpha = float(torch.empty(1).uniform_(0.3, 1.0, generator=gen))
        with_plate = float(torch.rand(1, generator=gen)) < 0.5
        plate = float(torch.empty(1).uniform_(0.0, 0.5, generator=gen)) if with_plate else 0.0
        a = m * alpha + (1 - m) * plate
        if float(torch.rand(1, generator=gen)) < 0.5:
            tex = torch.full((c, 1, 1), float(torch.rand(1, generator=gen))).expand(c, bh, bw)
        else:  # smooth noise texture, like an optimized adversarial logo
            k = int(torch.randint(3, 12, (1,), generator=gen))
            tex = torch.rand(1, c, k, k, generator=gen)
            tex = F.interpolate(tex, size=(bh, bw), mode="bilinear", align_corners=False)[0]
        reg = out[i, :, y:y + bh, xx:xx + bw]
        out[i, :, y:y + bh, xx:xx + bw] = (1 - a) * reg + a * tex
    return out


def augment_batch(x: torch.Tensor, gen: torch.Generator, logo: bool = False) -> torch.Tensor:
    """Flip, small affine, brightness/contrast, blur and noise; optional random logos. x in [0, 1]."""
    n = x.shape[0]
    if logo:
        x = random_logos(x, gen)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    ang = (torch.rand(n, generator=gen) - 0.5) * 2 * math.radians(12)
    sc = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    tx, ty = [(torch.rand(n, generator=gen) - 0.5) * 0.16 for _ in range(2)]
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    con = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
    bri = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    x = (x - 0.5) * con + 0.5 + bri
    x = x + torch.randn(x.shape, generator=gen) * 0.01
    return x.clamp(0, 1)
