"""The engine interface: model-domain images in, watermarked images and their parameters out.

An engine sees what a third-party model would see: images scaled to [0, 1] after the modality
LUT and VOI window (see miadmark.pixels). It never sees DICOM. The core maps its output back
to stored values and enforces the lesion invariant a second time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from .profile import ImageContext, Profile  # noqa: F401 - re-exported for engines


@dataclass
class WatermarkBatch:
    images: torch.Tensor  # (N, C, H, W) in [0, 1], same shape and device as the input
    params: list[dict[str, Any]]  # one JSON-serialisable dict per image; must hold "box": [y0, x0, y1, x1]


class Engine(ABC):
    """One watermarking method. Subclasses implement `watermark` (cf. torchattacks' `forward`)."""

    name: str = "abstract"

    def __init__(self, profile: Profile, device: torch.device):
        from .options import parse_options

        self.profile = profile
        self.device = device
        self.options = parse_options(self.name, profile.options)  # ValueError naming an unknown key

    @abstractmethod
    def watermark(
        self,
        images: torch.Tensor,
        lesion: torch.Tensor | None,
        contexts: list[ImageContext],
    ) -> WatermarkBatch:
        """Watermark a batch.

        images: (N, C, H, W) float32 in [0, 1], C = 1 or 3, on self.device.
        lesion: (N, H, W) bool, True = never change; None = no mask known (an engine may
            derive one, e.g. Grad-CAM). Pixels inside the mask must come back unchanged.
        """


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(device)
