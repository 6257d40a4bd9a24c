"""The plain visible logo blend the paper starts from: fixed transparency, seeded position off the lesion."""

from __future__ import annotations

import torch

from .base import Engine, ImageContext, WatermarkBatch
from .logo import box_size, logo_tensors
from .placement import blend, free_positions


class PlainLogoEngine(Engine):
    name = "plain"

    def watermark(self, images: torch.Tensor, lesion: torch.Tensor | None,
                  contexts: list[ImageContext]) -> WatermarkBatch:
        n, c, h, w = images.shape
        bh, bw = box_size(h, w, self.profile.max_area_fraction)
        mask, texture, logo_id = logo_tensors(self.profile.logo, bh, bw, c, images.device)
        alpha = float(self.profile.alpha_max)
        gen = torch.Generator().manual_seed(self.profile.seed)
        out, params = [], []
        for i in range(n):
            les = lesion[i] if lesion is not None else None
            free = free_positions(les, h, w, bh, bw).cpu()
            candidates = free.nonzero()
            if len(candidates):
                y, x = candidates[int(torch.randint(len(candidates), (1,), generator=gen))].tolist()
            else:  # no lesion-free box: keep the box, the mask is zeroed on the lesion in blend()
                y, x = (h - bh) // 2, (w - bw) // 2
            out.append(blend(images[i], mask, texture, alpha, y, x, les))
            params.append({"engine": self.name, "logo": logo_id, "box": [y, x, y + bh, x + bw],
                           "alpha": alpha, "seed": self.profile.seed})
        return WatermarkBatch(images=torch.stack(out), params=params)
