"""Differentiable stand-ins for what a third party does to an image (expectation over transforms)
and the input-diversity transforms of transfer attacks. All act on (N, C, S, S) in [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def st_round8(x: torch.Tensor) -> torch.Tensor:
    """8-bit rounding, straight-through gradient."""
    return x + ((x * 255).round() / 255 - x).detach()


def jpeg_numpy(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG encode/decode (OpenCV) of each image; x (N, C, H, W) in [0, 1]."""
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        img = arr[i, 0] if arr.shape[1] == 1 else arr[i].transpose(1, 2, 0)[..., ::-1]
        ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        dec = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
        out[i] = dec[None] if arr.shape[1] == 1 else dec[..., ::-1].transpose(2, 0, 1)
    return torch.from_numpy(out).to(x.device).float() / 255


def st_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG with a straight-through gradient (BPDA)."""
    return x + (jpeg_numpy(x, quality) - x).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 3 if sigma < 0.8 else 5
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"), g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="replicate"), g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def resize_back(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(2, int(h * factor)), max(2, int(w * factor))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def diversity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Input diversity (DI-FGSM): random shrink and pad, random flip."""
    h, w = x.shape[-2:]
    r = _uniform(gen, 0.85, 1.0)
    nh, nw = max(2, int(h * r)), max(2, int(w * r))
    small = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, h - nh + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - nw + 1, (1,), generator=gen))
    x = F.pad(small, (left, w - nw - left, top, h - nh - top))
    if float(torch.rand(1, generator=gen)) < 0.5:
        x = x.flip(-1)
    return x


def random_transform(x: torch.Tensor, gen: torch.Generator, *, p_div: float = 0.5, p_jpeg: float = 0.5,
                     p_blur: float = 0.3, p_resize: float = 0.3, jpeg_range=(50, 95)) -> torch.Tensor:
    """One EOT sample: what a third party might do, then input diversity, then 8-bit rounding."""
    if float(torch.rand(1, generator=gen)) < p_resize:
        x = resize_back(x, _uniform(gen, 0.5, 0.9))
    if float(torch.rand(1, generator=gen)) < p_blur:
        x = gaussian_blur(x, _uniform(gen, 0.4, 1.0))
    if float(torch.rand(1, generator=gen)) < p_jpeg:
        x = st_jpeg(x, int(torch.randint(jpeg_range[0], jpeg_range[1] + 1, (1,), generator=gen)))
    if float(torch.rand(1, generator=gen)) < p_div:
        x = diversity(x, gen)
    return st_round8(x.clamp(0, 1))
