"""The `transfer` objective: which classes the attack moves away from, and which iterate it keeps.
On real brain-MRI slices from ../shared/data, read in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from miadmark.engine import Profile, get_engine
from miadmark.engine.transfer import _away, _loss
from miadmark.surrogates import surrogate_paths

pytestmark = pytest.mark.skipif(not surrogate_paths(), reason="no surrogate weights committed")
torch.set_num_threads(1)


def brain_slices(shared_data, per_class: int = 1) -> torch.Tensor:
    root = shared_data / "brain_mri" / "Training"
    files = [p for c in ("glioma", "meningioma", "notumor", "pituitary")
             for p in sorted((root / c).glob("*.jpg"))[:per_class]]
    arrs = [np.asarray(Image.open(p).convert("L").resize((224, 224)), dtype=np.float32) / 255 for p in files]
    return torch.from_numpy(np.stack(arrs))[:, None]


def test_away_is_cross_entropy_for_one_class_and_the_mass_of_several():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1])
    one = F.one_hot(y, 4).bool()
    assert torch.allclose(_away(z, one), F.cross_entropy(z, y, reduction="none"), atol=1e-6)
    two = one.clone()
    two[:, 0] = True
    p = z.softmax(1)
    assert torch.allclose(_away(z, two), -(p * two).sum(1).log(), atol=1e-5)


def test_avoid_set_holds_the_prediction_and_never_every_class(shared_data):
    x = brain_slices(shared_data, 2)
    eng = get_engine(Profile(name="transfer"), "cpu")
    xs = eng.ensemble.prep(x)
    p = eng.ensemble.predict(xs)
    only_top = get_engine(Profile(name="transfer", options={"avoid": 1.1}), "cpu").avoid_classes(xs)
    assert torch.equal(only_top, F.one_hot(p.argmax(1), 4).bool())
    all_but_one = get_engine(Profile(name="transfer", options={"avoid": 0.0}), "cpu").avoid_classes(xs)
    assert bool((all_but_one.sum(1) == 3).all()), "the least likely class must stay free"
    default = eng.avoid_classes(xs)
    assert torch.equal(default, only_top | ((p >= 0.2) & (p > p.amin(1, keepdim=True))))


def test_keep_best_returns_an_iterate_at_least_as_damaging_as_the_last(shared_data):
    x = brain_slices(shared_data)
    lesion = torch.zeros(x.shape[0], 224, 224, dtype=torch.bool)
    opts = {"iterations": 4, "candidates": 2}
    best = get_engine(Profile(name="transfer", options={**opts, "keep_best": True}), "cpu")
    last = get_engine(Profile(name="transfer", options={**opts, "keep_best": False}), "cpu")
    out_best, out_last = best.watermark(x, lesion, []).images, last.watermark(x, lesion, []).images
    ens = best.ensemble
    with torch.no_grad():
        xs = ens.prep(x)
        avoid, f_clean = best.avoid_classes(xs), ens.outputs(xs)[1]
        loss_best = _loss(ens, ens.prep(out_best), avoid, f_clean, 0.5)
        loss_last = _loss(ens, ens.prep(out_last), avoid, f_clean, 0.5)
    assert bool((loss_best >= loss_last - 1e-4).all()), (loss_best, loss_last)
