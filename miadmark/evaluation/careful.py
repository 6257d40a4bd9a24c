"""Careful: models trained with random marks, since the tool is public.

The committed careful models were trained with random logo boxes (`miadmark train --logo-augment`,
surrogates/augment.py), today's mark generator; models trained with the spread engine's own random marks
at every level replace them through `models` once they are trained.
"""

from __future__ import annotations

from .base import Arena, ThirdParty
from .plain import ModelsOptions, chosen_models


class Careful(ThirdParty):
    name = "careful"
    description = "models trained with random marks (committed: random logo augmentation), the protected image as is"
    Options = ModelsOptions

    def models(self, arena: Arena) -> dict:
        return chosen_models(arena, self.options.models, careful=True)
