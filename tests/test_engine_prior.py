"""The universal prior `transfer` starts from: it obeys the logo constraints, it is used, and the
engine's invariants hold when it is."""

from __future__ import annotations

import torch

from miadmark.engine import Profile, get_engine
from miadmark.engine.ensemble import Ensemble
from miadmark.engine.prior import (A_MAX, A_MIN, CONTRAST, P_MAX, S_MIN, default_prior, fit_prior, load_prior,
                                   save_prior, train_prior)
from miadmark.surrogates import DEFAULT_SURROGATES

from test_engine_invariants import FAST, brainlike, disk

torch.set_num_threads(1)


def small_prior(tmp_path):
    ens = Ensemble.get(None, torch.device("cpu"))
    xs = brainlike(8, 1, ens.size)
    labels = torch.arange(8) % ens.models[0].num_classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 21), torch.linspace(-1, 1, 21), indexing="ij")
    mask = ((yy ** 2 + xx ** 2) < 0.8).float()
    blob = train_prior(ens, xs, labels, mask, steps=2, batch=4, progress=False)
    path = tmp_path / "p_prior.pt"
    save_prior(blob, {"surrogates": ens.names, "command": "test"}, path)
    return path, blob, ens


def test_prior_maps_obey_the_logo_constraints(tmp_path):
    path, blob, ens = small_prior(tmp_path)
    assert set(blob["priors"]) == {*(str(k) for k in range(ens.models[0].num_classes)), "None"}
    for a1, t1, a2, t2 in blob["priors"].values():
        assert a1.shape == (10, 10) and t1.shape == (1, 10, 10)  # half the 21 px box, rounded to even
        assert float(a1.min()) >= A_MIN - 1e-6 and float(a1.max()) <= A_MAX + 1e-6
        assert float(t1.min()) >= S_MIN - 1e-6 and float(a2.max()) <= P_MAX + 1e-6 and float(a2.min()) >= 0
        assert bool((t2 <= (t1 - CONTRAST).clamp_min(0) + 1e-6).all()), "the plate must stay darker"
    a1, t1, a2, t2 = fit_prior(load_prior(path)["priors"]["0"], 3, 7, 9, torch.device("cpu"))
    assert a1.shape == (3, 7, 9) and t1.shape == (3, 1, 7, 9) and a2.shape == (3, 7, 9)


def test_engine_uses_the_prior_and_keeps_invariants(tmp_path):
    path, _, _ = small_prior(tmp_path)
    x = brainlike(2, 1, 96)
    lesion = disk(2, 96, 40, 50, 14)
    opts = {**FAST, "iterations": 1}
    with_prior = get_engine(Profile(name="transfer", options={**opts, "prior": str(path)}), "cpu")
    without = get_engine(Profile(name="transfer", options={**opts, "prior": False}), "cpu")
    a = with_prior.watermark(x, lesion, [])
    b = without.watermark(x, lesion, [])
    assert not torch.equal(a.images, b.images), "the prior must change the starting point"
    assert torch.equal(a.images[:, 0][lesion], x[:, 0][lesion])
    for i, p in enumerate(a.params):
        y0, x0, y1, x1 = p["box"]
        assert (y1 - y0) * (x1 - x0) <= 96 * 96 / 9
        outside = torch.ones(96, 96, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert not ((a.images[i] != x[i]).any(0) & outside).any()


def test_default_prior_matches_the_default_surrogates():
    path = default_prior(list(DEFAULT_SURROGATES))
    assert path is not None and path.exists(), "the committed prior must be made for the default ensemble"
    assert default_prior(["no_such_model"]) is None


def test_chest_radiographs_go_to_the_chest_surrogate():
    from miadmark.engine import ImageContext
    from miadmark.surrogates import surrogate_paths

    from miadmark.surrogates import CHEST_SURROGATES

    if not surrogate_paths(CHEST_SURROGATES):
        import pytest

        pytest.skip("no chest surrogate committed")
    x = brainlike(3, 1, 96)
    ctx = [ImageContext(modality="DX"), ImageContext(modality="MR"), ImageContext(modality="CR")]
    res = get_engine(Profile(name="transfer", options=FAST), "cpu").watermark(x, None, ctx)
    assert [p["surrogates"] for p in res.params] == [CHEST_SURROGATES, list(DEFAULT_SURROGATES), CHEST_SURROGATES]
    alone = get_engine(Profile(name="transfer", options=FAST), "cpu").watermark(x[1:2], None, ctx[1:2])
    assert torch.equal(res.images[1:2], alone.images), "a mixed batch is watermarked group by group"
    named = get_engine(Profile(name="transfer", options={**FAST, "surrogates": list(DEFAULT_SURROGATES)}), "cpu")
    assert {tuple(p["surrogates"]) for p in named.watermark(x, None, ctx).params} == {tuple(DEFAULT_SURROGATES)}
