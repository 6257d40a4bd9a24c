"""Readability of a protected image over the anatomy, not only in a box: what a reader keeps.

* contrast transmission: the least-squares slope of the protected grey on the original grey over the
  anatomy pixels (1 = every contrast kept, 0.5 = a 50 % blend with anything flat, 0 = an opaque plate);
* mean SSIM over the anatomy (Gaussian window 11, sigma 1.5);
* PSNR over the whole image, the fraction of pixels changed, lesion pixels changed (must be 0).

The anatomy is a foreground mask from intensity (grey above `level` after a small closing, so that dark
structures inside the body count), the lesion excluded: the lesion is never changed, and counting it
would flatter the mark.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ANATOMY_LEVEL = 0.04  # grey in [0, 1] above which a pixel is body, not air (the cloak's background level)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM map (Gaussian window 11, sigma 1.5) of (N, 1, H, W) images in [0, 1]."""
    r = torch.arange(11, dtype=a.dtype) - 5
    g = torch.exp(-(r ** 2) / (2 * 1.5 ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :])[None, None]

    def f(x):
        return F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), k)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) mean over the channels."""
    return x.mean(1, keepdim=True)


def anatomy_mask(images: torch.Tensor, lesion: torch.Tensor | None = None, level: float = ANATOMY_LEVEL,
                 close: int = 5) -> torch.Tensor:
    """(N, H, W) bool: body pixels of the original images (grey > level, closed with a `close` px window),
    lesion pixels removed."""
    fg = (grey(images) > level).float()
    if close > 1:
        p = close // 2
        fg = F.max_pool2d(F.pad(fg, (p,) * 4, mode="replicate"), close, 1)  # dilate, then erode
        fg = -F.max_pool2d(F.pad(-fg, (p,) * 4, mode="replicate"), close, 1)
    m = fg[:, 0] > 0.5
    return m if lesion is None else m & ~lesion.to(m.device)


def transmission_per_image(images: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Slope of out on images (grey) over each image's mask; nan where the mask holds no contrast."""
    a, b = grey(images)[:, 0], grey(out)[:, 0]
    slopes = []
    for ai, bi, mi in zip(a, b, mask):
        x, y = ai[mi].double(), bi[mi].double()
        var = float(((x - x.mean()) ** 2).sum()) if len(x) > 16 else 0.0
        slopes.append(float(((x - x.mean()) * (y - y.mean())).sum()) / var if var > 1e-6 else float("nan"))
    return slopes


def ssim_per_image(images: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Mean SSIM over each image's mask (nan where the mask is empty)."""
    s = ssim_map(grey(images).float(), grey(out).float())[:, 0]
    num, den = (s * mask).flatten(1).sum(1), mask.flatten(1).sum(1)
    return [float(n / d) if d > 0 else float("nan") for n, d in zip(num, den)]


def psnr_per_image(images: torch.Tensor, out: torch.Tensor) -> list[float]:
    """PSNR over the whole image in dB (inf when unchanged)."""
    mse = ((out - images) ** 2).flatten(1).mean(1)
    return [math.inf if float(v) == 0 else 10 * math.log10(1 / float(v)) for v in mse]


def _mean(v: list[float], nd: int = 4) -> float | None:
    v = [x for x in v if not math.isnan(x)]
    return round(float(np.mean(v)), nd) if v else None


def readability(images: torch.Tensor, out: torch.Tensor, lesion: torch.Tensor, seconds_per_image: float | None = None,
                level: float = ANATOMY_LEVEL) -> dict:
    """The readability block of a report: means (and worst image) over the anatomy of each image."""
    anat = anatomy_mask(images, lesion, level)
    tr, ss = transmission_per_image(images, out, anat), ssim_per_image(images, out, anat)
    ps = psnr_per_image(images, out)
    finite = [p for p in ps if math.isfinite(p)]
    changed = (out != images).any(1)
    return {
        "anatomy": f"grey > {level:g} (closed, 5 px), lesion excluded; mean fraction of the image "
                   f"{float(anat.float().mean()):.3f}",
        "contrast_transmission": _mean(tr), "contrast_transmission_min": round(min(tr), 4) if tr else None,
        "ssim_anatomy": _mean(ss), "ssim_anatomy_min": round(min(ss), 4) if ss else None,
        "psnr_db": round(float(np.mean(finite)), 2) if finite else None,
        "psnr_db_min": round(min(finite), 2) if finite else None,
        "images_unchanged": sum(not math.isfinite(p) for p in ps),
        "fraction_pixels_changed": round(float(changed.float().mean()), 5),
        "fraction_anatomy_changed": round(float((changed & anat).sum() / anat.sum().clamp_min(1)), 5),
        "lesion_pixels_changed": int((changed & lesion.to(changed.device)).sum()),
        "seconds_per_image": None if seconds_per_image is None else round(seconds_per_image, 4),
    }
