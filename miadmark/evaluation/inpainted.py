"""Mark inpainted: every pixel the mark visibly changed is painted over from its surroundings (OpenCV TELEA
or Navier-Stokes), then the plain models read the result.

An oracle for the third party: it is told exactly which pixels changed by more than `visible_level`
grey levels (of 255), i.e. beyond what the imperceptible cloak may do, so the box logo and a spread mark's
visible layer are painted over, an imperceptible cloak stays. A mark over all the anatomy leaves little to
inpaint from: `cost` says what fraction of the image was painted.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .base import Arena, ThirdParty
from .plain import chosen_models


def inpaint(images: torch.Tensor, mask: torch.Tensor, method: int = cv2.INPAINT_TELEA, radius: int = 3) -> torch.Tensor:
    """OpenCV inpainting of each image (N, C, H, W) in [0, 1] on its mask (N, H, W) bool, 8-bit."""
    out = []
    for img, m in zip(images, mask):
        u8 = (img.clamp(0, 1) * 255).round().byte().cpu().numpy()
        u8 = u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0)
        res = cv2.inpaint(np.ascontiguousarray(u8), m.cpu().numpy().astype(np.uint8), radius, method)
        res = res[None] if res.ndim == 2 else res.transpose(2, 0, 1)
        out.append(torch.from_numpy(res).float() / 255)
    return torch.stack(out) if out else images.clone()


def visible_change(images: torch.Tensor, original: torch.Tensor, level: float, dilate: int = 1) -> torch.Tensor:
    """(N, H, W) bool: pixels whose grey moved by more than `level` (of 255), grown by `dilate` px."""
    m = ((images - original).abs().amax(1, keepdim=True) > level / 255.0).float()
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, 1, dilate)
    return m[:, 0] > 0.5


class MarkInpainted(ThirdParty):
    name = "mark_inpainted"
    description = "plain models after OpenCV inpainting of every pixel the mark visibly changed (oracle mask)"

    @dataclass(frozen=True)
    class Options:
        visible_level: float = 8.0  # grey levels of 255: the cloak's own L-inf bound; beyond it is visible
        dilate: int = 1
        method: str = "telea"  # or "ns" (Navier-Stokes)
        models: tuple = ()

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=False)

    def view(self, images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.method not in ("telea", "ns"):
            raise ValueError(f"mark_inpainted: method must be telea or ns, not {o.method!r}")
        mask = visible_change(images, original, o.visible_level, o.dilate)
        self.cost["fraction_inpainted"] = round(float(mask.float().mean()), 4)
        out = inpaint(images, mask, cv2.INPAINT_TELEA if o.method == "telea" else cv2.INPAINT_NS)
        return torch.where(mask[:, None], out, images)  # pixels off the mask stay bit for bit
