"""Adaptive: a third party protects its own training images with the tool (no key needed for that) and
fine-tunes a clean-trained model on them, so that its model learns to read through the mark.

The third party the tool cannot be expected to stop; the report says what it cost: images protected, the
seconds to protect them and to fine-tune.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..surrogates.augment import augment_batch
from ..surrogates.data import to_model_input
from .base import Arena, ThirdParty
from .plain import chosen_models


def fine_tune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch: int,
              seed: int, mark: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
              ) -> torch.nn.Module:
    """A copy of `model` trained on (x, y) at its own input size (AdamW, cosine decay, the training's
    augmentation; `mark` applied to each batch first when given), in eval mode when done."""
    model = copy.deepcopy(model)
    meta = model.meta
    for p in model.parameters():
        p.requires_grad_(True)
    x = to_model_input((x * 255).round().to(torch.uint8), meta["in_size"], meta["in_ch"])
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, epochs * -(-len(x) // batch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = mark(x[idx], gen) if mark is not None else x[idx]
            loss = F.cross_entropy(model(augment_batch(xb, gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.meta = dict(meta, fine_tuned_on="own protected images")
    return model


class Adaptive(ThirdParty):
    name = "adaptive"
    description = "a plain model fine-tuned on the third party's own images protected with the tool (no key)"

    @dataclass(frozen=True)
    class Options:
        base: tuple = ("resnet10",)  # which committed plain models it fine-tunes (by architecture)
        epochs: int = 2
        lr: float = 3e-4
        batch: int = 32
        with_clean: bool = True  # also the clean copies of its images (it keeps reading clean ones well)
        seed: int = 21
        models: tuple = ()  # weight files it starts from instead of the committed plain models

    def prepare(self, arena: Arena) -> None:
        own = arena.own_protected()
        x, y = own["protected"], own["labels"]
        if self.options.with_clean:
            x, y = torch.cat([x, own["clean"]]), torch.cat([y, y])
        self._models, t0 = {}, time.perf_counter()
        for name, model in chosen_models(arena, self.options.models, careful=False).items():
            if model.meta.get("arch") in self.options.base:
                self._models[f"{name}_adapted"] = fine_tune(model, x, y, epochs=self.options.epochs,
                                                            lr=self.options.lr, batch=self.options.batch,
                                                            seed=self.options.seed)
        self.cost = dict(own["cost"], training_images=len(x), fine_tune_seconds=round(time.perf_counter() - t0, 1),
                         models_fine_tuned=len(self._models), threads=torch.get_num_threads())

    def models(self, arena: Arena) -> dict:
        return self._models
