"""Careful with the tool's own marks: the committed careful models fine-tuned on clean training images
under random marks of every strength level drawn from the tool's own mark generator
(`engine.spread.random_mark`; one level at random per batch), since the tool is public.

Fine-tuned, not trained from scratch (CPU time): the result is cached per dataset and options (the models
do not depend on the evaluated setting), and `cost` gives the seconds of the run that trained them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import torch

from ..surrogates import data
from ..surrogates.train import load, save
from .adaptive import fine_tune
from .base import Arena, ThirdParty
from .plain import chosen_models


def random_level_mark(gen: torch.Generator):
    """A batch transform: a random mark of a level drawn per batch (the tool's own generator)."""
    from ..engine.profile import STRENGTHS
    from ..engine.spread import random_mark

    def mark(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        level = STRENGTHS[int(torch.randint(len(STRENGTHS), (1,), generator=gen))]
        return random_mark(x, level, g)
    return mark


class CarefulMarks(ThirdParty):
    name = "careful_marks"
    description = ("careful models fine-tuned with random marks of every level from the tool's own mark "
                   "generator (spread.random_mark)")

    @dataclass(frozen=True)
    class Options:
        images: int = 1000  # clean training images it marks at random
        epochs: int = 2
        lr: float = 1e-3
        batch: int = 32
        seed: int = 41
        base: tuple = ("resnet10",)  # which committed careful models it starts from (by architecture)
        models: tuple = ()  # start weights instead of the committed careful models
        cache: bool = True

    def prepare(self, arena: Arena) -> None:
        o = self.options
        self._models, self.cost = {}, {"images_marked": o.images, "epochs": o.epochs}
        idx = arena.training_index()
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(o.seed))[:o.images].sort().values]
        for name, model in chosen_models(arena, o.models, careful=True).items():
            if model.meta.get("arch") not in o.base:
                continue
            key = hashlib.sha256(json.dumps([arena.dataset.name, name, asdict(o)], default=str).encode()).hexdigest()
            path = data.CACHE_DIR / "careful_marks" / f"{arena.dataset.name}_{name}_{key[:12]}.pt"
            if o.cache and path.exists():
                tuned = load(path)
                self.cost.update(cached=str(path))
            else:
                t0 = time.perf_counter()
                x = arena.dataset.images[idx].float() / 255
                tuned = fine_tune(model, x, arena.dataset.labels[idx], epochs=o.epochs, lr=o.lr, batch=o.batch,
                                  seed=o.seed, mark=random_level_mark(torch.Generator().manual_seed(o.seed + 1)))
                tuned.meta = dict(tuned.meta, fine_tune_seconds=round(time.perf_counter() - t0, 1),
                                  fine_tuned_on="random marks of every level (spread.random_mark)")
                if o.cache:
                    save(tuned, tuned.meta, path)
            self.cost[f"{name}_fine_tune_seconds"] = tuned.meta.get("fine_tune_seconds")
            self._models[f"{name}_marks"] = tuned

    def models(self, arena: Arena) -> dict:
        return self._models
