"""Plain: models trained on clean images (the committed 128 px black-box models), reading the protected image
as it comes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..surrogates.train import load
from .base import Arena, ThirdParty


@dataclass(frozen=True)
class ModelsOptions:
    models: tuple = ()  # weight files; empty: the committed black-box models of the dataset


def chosen_models(arena: Arena, paths: tuple, careful: bool) -> dict:
    return {Path(p).stem: load(p) for p in paths} if paths else arena.committed_models(careful=careful)


class Plain(ThirdParty):
    name = "plain"
    description = "clean-trained models (committed black-box, 128 px), the protected image as is"
    Options = ModelsOptions

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=False)
