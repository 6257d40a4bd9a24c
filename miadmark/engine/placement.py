"""Where a logo box may go: positions whose box holds no lesion pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def free_positions(lesion: torch.Tensor | None, height: int, width: int, box_h: int, box_w: int
                   ) -> torch.Tensor:
    """Bool (H - box_h + 1, W - box_w + 1): True where the box [y:y+bh, x:x+bw] avoids the lesion."""
    out_h, out_w = height - box_h + 1, width - box_w + 1
    if lesion is None or not bool(lesion.any()):
        return torch.ones(out_h, out_w, dtype=torch.bool, device=lesion.device if lesion is not None else "cpu")
    counts = F.avg_pool2d(lesion.float()[None, None], (box_h, box_w), stride=1)[0, 0]
    return counts == 0


def blend(image: torch.Tensor, mask: torch.Tensor, texture: torch.Tensor, alpha: torch.Tensor | float,
          y: int, x: int, lesion: torch.Tensor | None) -> torch.Tensor:
    """x' = (1 - a*M) * x + a*M*L inside the box at (y, x); M is zeroed on lesion pixels."""
    out = image.clone()
    bh, bw = mask.shape
    m = mask * alpha
    if lesion is not None:
        m = m * (~lesion[y:y + bh, x:x + bw]).to(m.dtype)
    region = out[:, y:y + bh, x:x + bw]
    out[:, y:y + bh, x:x + bw] = (1 - m) * region + m * texture
    return out
