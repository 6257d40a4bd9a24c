"""Pictures for the reports: original | protected | difference, side by side."""

from __future__ import annotations

from pathlib import Path

import torch

DIFF_GAIN = 4  # the difference panel shows |protected - original| x 4 (lesion in mid grey)


def triptych(original: torch.Tensor, protected: torch.Tensor, lesion: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """(C, H, 3W + 2 gap) image: original | protected | |difference| x DIFF_GAIN, lesion mid grey."""
    c, h, w = original.shape
    diff = ((protected - original).abs() * DIFF_GAIN).clamp(0, 1)
    diff = torch.where(lesion[None].expand_as(diff), torch.full_like(diff, 0.5), diff)
    sep = torch.ones(c, h, gap)
    return torch.cat([original, sep, protected, sep, diff], 2)


def save_png(t: torch.Tensor, path: Path) -> None:
    from PIL import Image

    a = (t.clamp(0, 1) * 255).round().byte().cpu().numpy()
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    Image.fromarray(a).save(path, optimize=True)


def write_triptychs(out_dir: Path, images: torch.Tensor, protected: torch.Tensor, lesion: torch.Tensor,
                    index: list[int], examples: list[dict]) -> list[dict]:
    """One ex{k}_triptych.png per example image; its name added to each example's entry."""
    for k, i in enumerate(index):
        name = f"ex{k}_triptych.png"
        save_png(triptych(images[i].cpu(), protected[i].cpu(), lesion[i].cpu()), Path(out_dir) / name)
        examples[k]["triptych"] = name
    return examples
