"""Removal: a third party trains a small U-Net to undo the mark, on (protected, clean) pairs it made with
the tool on its own images, and runs the plain models on the U-Net's output (cf. SplitNet, WDNet, SLBR:
single-image watermark removal, which works on see-through marks because the background is still there).

The U-Net is fully convolutional and predicts the residual; it trains on random crops and runs on the
whole image at its stored resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Arena, ThirdParty
from .plain import chosen_models


def _block(ci: int, co: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(co, co, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Three-level U-Net (widths w, 2w, 4w), output = input + predicted residual, clamped to [0, 1]."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.e1, self.e2, self.e3 = _block(channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), _block(4 * w, 2 * w)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), _block(2 * w, w)
        self.out = nn.Conv2d(w, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.e1(xp)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.u2(e3), e2], 1))
        d1 = self.d1(torch.cat([self.u1(d2), e1], 1))
        return (xp + self.out(d1))[..., :h, :w].clamp(0, 1)


def train_step(net: UNet, opt: torch.optim.Optimizer, marked: torch.Tensor, clean: torch.Tensor) -> float:
    """One L1 step toward the clean images; returns the loss before the step."""
    loss = F.l1_loss(net(marked), clean)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def random_crops(a: torch.Tensor, b: torch.Tensor, n: int, size: int, gen: torch.Generator):
    """n random aligned crops of size px from the pairs (a, b)."""
    idx = torch.randint(len(a), (n,), generator=gen)
    h, w = a.shape[-2:]
    size = min(size, h, w)
    ys = torch.randint(h - size + 1, (n,), generator=gen)
    xs = torch.randint(w - size + 1, (n,), generator=gen)
    ca = torch.stack([a[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs)])
    cb = torch.stack([b[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs)])
    return ca, cb


class Removal(ThirdParty):
    name = "removal_unet"
    description = "plain models on the output of a U-Net trained on (protected, clean) pairs of its own images"

    @dataclass(frozen=True)
    class Options:
        steps: int = 400
        batch: int = 8
        crop: int = 64
        width: int = 16
        lr: float = 1e-3
        seed: int = 31
        models: tuple = ()

    def prepare(self, arena: Arena) -> None:
        own = arena.own_protected()
        o = self.options
        torch.manual_seed(o.seed)
        gen = torch.Generator().manual_seed(o.seed)
        self.net = UNet(own["clean"].shape[1], o.width)
        opt = torch.optim.Adam(self.net.parameters(), lr=o.lr)
        t0, losses = time.perf_counter(), []
        self.net.train()
        for _ in range(o.steps):
            marked, clean = random_crops(own["protected"], own["clean"], o.batch, o.crop, gen)
            losses.append(train_step(self.net, opt, marked, clean))
        self.net.eval()
        k = max(1, len(losses) // 10)
        before = float((own["protected"] - own["clean"]).abs().mean())
        self.cost = dict(own["cost"], train_seconds=round(time.perf_counter() - t0, 1), steps=o.steps,
                         l1_first=round(sum(losses[:k]) / k, 5), l1_last=round(sum(losses[-k:]) / k, 5),
                         l1_protected_vs_clean=round(before, 5))

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=False)

    def view(self, images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.net(images[i:i + 16]) for i in range(0, len(images), 16)]) if len(images) \
                else images
