"""JPEG: the plain models read the protected image after a JPEG round trip (quality 75 by default)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.eot import jpeg_numpy
from .base import Arena, ThirdParty
from .plain import chosen_models


class Jpeg(ThirdParty):
    name = "jpeg_q75"
    description = "plain models after JPEG (8-bit, OpenCV) at the given quality"

    @dataclass(frozen=True)
    class Options:
        quality: int = 75
        models: tuple = ()

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=False)

    def view(self, images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        return jpeg_numpy(images, self.options.quality)
