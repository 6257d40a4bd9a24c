"""The optimisation the iterative engines share: momentum sign steps (MI-FGSM, Dong et al. 2018) on a
watermark's parameters, each image keeping the parameters of its best iterate.

`KeepBest` and `momentum_step` serve `transfer` (its own objective: several EOT samples per step) and
`ascend` runs the whole loop of both `cloak` designs (box and spread): expectation over a third party's
transforms and, in a share of the steps, the visible mark filled from its surroundings (a stand-in for
inpainting), so the rest of the watermark must carry the attack when the mark is painted over.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .eot import gaussian_blur, random_transform


class KeepBest:
    """Each image's parameters from the iterate with the highest loss seen so far."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.loss = torch.full((len(params[0]),), -float("inf"), device=params[0].device)
        self.best = [p.detach().clone() for p in params]

    def see(self, loss: torch.Tensor) -> None:
        better = loss > self.loss
        self.loss[better] = loss[better]
        for b, p in zip(self.best, self.params):
            b[better] = p.detach()[better]

    def restore(self) -> None:
        for b, p in zip(self.best, self.params):
            p.copy_(b)


def momentum_step(params: list[torch.Tensor], grads: tuple[torch.Tensor, ...], mom: list[torch.Tensor],
                  steps: list[float], momentum: float, cloak: int | None = None, ti_sigma: float = 0.0,
                  l2: bool = False) -> None:
    """One step in place: each gradient normalised by its mean magnitude per image, accumulated with momentum,
    a sign step. The cloak (params[cloak]) may smooth its gradient over shifts (ti_sigma > 0: a translation-
    invariant attack transfers to other models, Dong et al. 2019) and take L2 steps (the energy goes where the
    gradient is, which a PSNR bound favours)."""
    for j, (p, gr) in enumerate(zip(params, grads)):
        if j == cloak and ti_sigma > 0:
            gr = gaussian_blur(gr, ti_sigma)
        gr = gr / gr.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (gr.dim() - 1))
        mom[j] = momentum * mom[j] + gr
        if j == cloak and l2:
            nrm = mom[j].flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            p.add_(steps[j] * mom[j] / nrm * mom[j][0].numel() ** 0.5)
        else:
            p.add_(steps[j] * mom[j].sign())


def fill_box(xs: torch.Tensor, box_low: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """xs with the box (N, 1, S, S) replaced by a smooth fill from its surroundings (normalized
    convolution): what inpainting the visible logo leaves."""
    k = int(4 * sigma) | 1
    r = torch.arange(k, dtype=xs.dtype, device=xs.device) - k // 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())

    def blur(t):
        c = t.shape[1]
        t = F.conv2d(F.pad(t, (k // 2, k // 2, 0, 0), mode="replicate"), g.view(1, 1, 1, k).expand(c, 1, 1, k),
                     groups=c)
        return F.conv2d(F.pad(t, (0, 0, k // 2, k // 2), mode="replicate"), g.view(1, 1, k, 1).expand(c, 1, k, 1),
                        groups=c)

    keep = 1 - box_low
    fill = blur(xs * keep) / blur(keep).clamp_min(1e-3)
    for _ in range(2):  # wide boxes: a second pass reaches the centre
        fill = torch.where(blur(keep) > 1e-3, fill, blur(fill))
    return xs * keep + fill * box_low


def ascend(params: list[torch.Tensor], steps: list[float], clamp: Callable[[], None],
           composite: Callable[[], torch.Tensor], prep: Callable[[torch.Tensor], torch.Tensor],
           loss: Callable[[torch.Tensor], torch.Tensor], mark_low: torch.Tensor, gen: torch.Generator, o,
           cloak: int | None = None) -> None:
    """The `cloak` engines' loop, params left at each image's best iterate (o.keep_best) or the last.

    composite(): the watermarked images at full resolution from params; prep: to the surrogates' input;
    loss: per-image loss to raise; mark_low (N, 1, S, S): the visible mark at the surrogates' scale (what the
    fill paints over); clamp(): params back into their bounds; o: the engine's options (iterations, momentum,
    transforms, p_fill, keep_best, ti_sigma, cloak_step); cloak: the index of the cloak among params."""
    mom = [torch.zeros_like(p) for p in params]
    for p in params:
        p.requires_grad_(True)
    keep = KeepBest(params) if o.keep_best else None
    for _ in range(o.iterations):
        xc = prep(composite())
        xa = xc
        if o.transforms:
            if float(torch.rand(1, generator=gen)) < o.p_fill:
                xa = fill_box(xa, mark_low)
            xa = random_transform(xa.clamp(0, 1), gen)
        grads = torch.autograd.grad(loss(xa).sum(), params)
        with torch.no_grad():
            if keep is not None:
                keep.see(loss(xc.detach()))
            momentum_step(params, grads, mom, steps, o.momentum, cloak, o.ti_sigma, o.cloak_step == "l2")
            clamp()
    with torch.no_grad():
        if keep is not None:
            keep.see(loss(prep(composite())))
            keep.restore()
