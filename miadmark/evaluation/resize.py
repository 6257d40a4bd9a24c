"""Resize: the plain models read the protected image after resizing down (1/2) and back up."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.eot import resize_back
from .base import Arena, ThirdParty
from .plain import chosen_models


class Resize(ThirdParty):
    name = "resize_half"
    description = "plain models after resizing to the given factor and back (bilinear, antialiased)"

    @dataclass(frozen=True)
    class Options:
        factor: float = 0.5
        models: tuple = ()

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=False)

    def view(self, images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        return resize_back(images, self.options.factor)
