"""What every third party of `miadmark evaluate` shares: the arena (data, the public tool, the models it
may download) and the interface (typed options, prepare, models, view).

A third party has the tool (it is public: every profile and its options) but not the key, its own images
(the training split: disjoint from the evaluation images, which come from the validation split) and the
labels of those images. Evaluation models never train the engine or choose its settings.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..engine import ImageContext, Profile, get_engine
from ..surrogates import BLACKBOX_DIR
from ..surrogates.data import Dataset
from ..surrogates.train import balanced_accuracy, load

log = logging.getLogger(__name__)


def parse_options(cls: type, given: dict[str, Any] | None, owner: str):
    """A frozen options dataclass from a dict: unknown keys refused (a typo must not run silently with the
    default), each value converted to its field's type."""
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    conv = {}
    for k, v in given.items():
        typ = typing.get_origin(hints[k]) or hints[k]
        if typ is bool and not isinstance(v, bool):
            raise ValueError(f"{owner}: option {k} takes true or false, not {v!r}")
        if typ is tuple and isinstance(v, str):
            raise ValueError(f"{owner}: option {k} takes a list, not {v!r}")
        conv[k] = typ(v)
    return cls(**conv)


@dataclass(frozen=True)
class OwnImages:
    """The third party's own images, protected by it with the tool (adaptive fine-tuning, removal U-Net)."""

    n: int = 1000  # training images it protects (the issue: >= 1,000)
    profile: str = ""  # the tool's profile it runs ("" = the evaluated one); `fast` is what `auto` runs on a CPU
    seed: int = 101  # its own seed: it has no key and does not know the evaluation's seed
    options: dict | None = None  # its engine options (None: the evaluated ones that its engine knows)


@dataclass
class Arena:
    dataset: Dataset
    profile: Profile  # the evaluated profile (public)
    context: ImageContext
    eval_index: torch.Tensor  # dataset indices of the evaluation images (validation split)
    balanced: bool = False
    own: OwnImages = field(default_factory=OwnImages)
    device: str = "cpu"
    batch: int = 32
    black_box: dict | None = None  # the evaluation's black-box models (None: the committed ones of the dataset)
    _own_cache: dict = field(default_factory=dict)

    def score(self, model, images: torch.Tensor) -> float:
        from ..evaluate import predict

        labels = self.dataset.labels[self.eval_index]
        pred = predict(model, images)
        if self.balanced:
            return round(balanced_accuracy(pred, labels), 4)
        return round(float((pred == labels).float().mean()), 4)

    def committed_models(self, careful: bool) -> dict[str, torch.nn.Module]:
        """The black-box models of this dataset (given, else committed): plain (clean-trained) or careful."""
        if self.black_box is not None:
            return {k: m for k, m in self.black_box.items() if bool(m.meta.get("logo_augment")) == careful}
        out = {}
        for p in sorted(BLACKBOX_DIR.glob("*.pt")):
            m = load(p)
            if m.meta.get("dataset") == self.dataset.name and bool(m.meta.get("logo_augment")) == careful:
                out[p.stem] = m
        return out

    def training_index(self) -> torch.Tensor:
        """Indices of the third party's own images: the training split, never an evaluation image."""
        idx = torch.nonzero(~self.dataset.is_val).flatten()
        overlap = set(idx.tolist()) & set(self.eval_index.tolist())
        if overlap:  # fail closed: a third party trained on evaluation images measures nothing
            raise RuntimeError(f"{len(overlap)} evaluation images in the third party's training images")
        return idx

    def own_protected(self) -> dict:
        """The third party's own images (a seeded subset of the training split), protected with the tool
        at the evaluated profile's settings under its own seed; made once per run, shared."""
        if self._own_cache:
            return self._own_cache
        idx = self.training_index()
        keep = torch.randperm(len(idx), generator=torch.Generator().manual_seed(self.own.seed))[:self.own.n]
        idx = idx[keep.sort().values]
        clean = self.dataset.images[idx].float() / 255
        name = self.own.profile or self.profile.name
        opts = self.own.options
        if opts is None:
            from ..engine.options import OPTION_TYPES

            known = OPTION_TYPES[name].model_fields if name in OPTION_TYPES else {}
            opts = {k: v for k, v in self.profile.options.items() if k in known}
        prof = dataclasses.replace(self.profile, name=name, seed=self.own.seed, options=opts)
        engine = get_engine(prof, self.device)
        t0, prot, params = time.perf_counter(), [], []
        for i in range(0, len(clean), self.batch):
            xb = clean[i:i + self.batch]
            res = engine.watermark(xb.to(engine.device), None, [self.context] * len(xb))
            prot.append(res.images.cpu())
            params += res.params
        secs = time.perf_counter() - t0
        log.info("third party protected %d of its own images with %s in %.0f s", len(clean), name, secs)
        self._own_cache.update(clean=clean, protected=torch.cat(prot), labels=self.dataset.labels[idx],
                               cost={"images_protected": len(clean), "profile": name, "options": opts,
                                     "strength": getattr(prof, "strength", None),
                                     "design": params[0].get("design", "box") if params else None,
                                     "protect_seconds": round(secs, 1)})
        return self._own_cache


class ThirdParty(ABC):
    """One third party: the models it uses and what it does to a protected image before reading it."""

    name: ClassVar[str]
    description: ClassVar[str]

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = parse_options(self.Options, options, self.name)
        self.cost: dict[str, Any] = {}

    def prepare(self, arena: Arena) -> None:
        """Train what it needs (on its own images); record what that cost in self.cost."""

    def models(self, arena: Arena) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def view(self, images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """What its models read. `original` is given only to the oracle of the inpainting party (it is told
        which pixels the mark changed); the others ignore it."""
        return images

    def evaluate(self, arena: Arena, clean: torch.Tensor, protected: torch.Tensor) -> dict:
        t0 = time.perf_counter()
        self.prepare(arena)
        models = self.models(arena)
        views = {"clean": self.view(clean, clean), "protected": self.view(protected, clean)}
        acc = {m: {c: arena.score(model, v) for c, v in views.items()} for m, model in models.items()}
        mean = {c: round(sum(a[c] for a in acc.values()) / len(acc), 4) if acc else None for c in views}
        return {"description": self.description, "options": dataclasses.asdict(self.options), "models": acc,
                "mean": mean, "cost": self.cost, "seconds": round(time.perf_counter() - t0, 1)}

