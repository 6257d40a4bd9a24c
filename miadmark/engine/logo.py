"""The visible logo: a shape mask M in [0, 1] and a texture L, rendered by code or read from a PNG."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

DEFAULT_LOGO_ID = "miadmark-shield-v1"


@lru_cache(maxsize=4)
def _default_logo_rgba(size: int = 256) -> np.ndarray:
    """A shield with a cross and ring: bold strokes a reader sees at once, no text (no fonts needed)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size
    shield = [(s * 0.5, s * 0.04), (s * 0.92, s * 0.2), (s * 0.85, s * 0.62), (s * 0.5, s * 0.96),
              (s * 0.15, s * 0.62), (s * 0.08, s * 0.2)]
    d.polygon(shield, outline=(255, 255, 255, 255), width=max(3, s // 18))
    d.ellipse([s * 0.3, s * 0.28, s * 0.7, s * 0.68], outline=(255, 255, 255, 255), width=max(3, s // 22))
    d.rectangle([s * 0.46, s * 0.22, s * 0.54, s * 0.76], fill=(255, 255, 255, 255))
    d.rectangle([s * 0.24, s * 0.44, s * 0.76, s * 0.52], fill=(255, 255, 255, 255))
    return np.asarray(img)


def load_logo_rgba(path: str | None) -> tuple[np.ndarray, str]:
    """RGBA uint8 array and a logo id recorded in the restoration record."""
    if path is None:
        return _default_logo_rgba(), DEFAULT_LOGO_ID
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    if rgba[..., 3].max() == 0:
        raise ValueError(f"logo {path}: the alpha channel is empty")
    return rgba, f"png:{path}"


def logo_tensors(path: str | None, height: int, width: int, channels: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mask M (h, w) in [0, 1] and texture L (C, h, w) in [0, 1], resized to the logo box."""
    rgba, logo_id = load_logo_rgba(path)
    t = torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    mask = t[3]
    rgb = t[:3]
    texture = rgb.mean(0, keepdim=True) if channels == 1 else rgb
    return mask.to(device), texture.to(device), logo_id


def logo_downsampled(path: str | None, size: tuple[int, int], rendered: tuple[int, int], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mask (hs, ws) and grey texture (1, hs, ws) at a model's scale: the logo rendered at `rendered` (its
    full-resolution box) and area-downsampled to `size`, as a model sees it after the image is resized."""
    m, t, logo_id = logo_tensors(path, *rendered, 1, device)
    m = F.interpolate(m[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return m, t, logo_id


def box_size(height: int, width: int, max_area_fraction: float) -> tuple[int, int]:
    """Logo box of the image's aspect ratio covering at most max_area_fraction of it."""
    scale = float(np.sqrt(max_area_fraction))
    return max(1, int(height * scale)), max(1, int(width * scale))
