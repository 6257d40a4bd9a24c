"""The iterative engines' shared optimisation (engine/ascent.py): each image keeps its best iterate, and
the cloak's step options reach both `cloak` designs."""

import dataclasses

import numpy as np
import torch
from conftest import DICOM_DATA

from miadmark.dicomio import read_dicom
from miadmark.engine import get_engine
from miadmark.engine.ascent import KeepBest, momentum_step
from miadmark.engine.profile import Profile
from miadmark.protect import _prepare, _run_engine


def test_keep_best_gives_each_image_its_own_best_iterate():
    p = torch.zeros(3, 2)
    keep = KeepBest([p])
    for value, loss in ((1.0, [0.5, 0.1, 0.9]), (2.0, [0.2, 0.8, 0.3]), (3.0, [0.4, 0.7, 0.95])):
        p.fill_(value)
        keep.see(torch.tensor(loss))
    keep.restore()
    assert p[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_momentum_step_is_a_sign_step_on_the_normalised_gradient_with_momentum():
    p, mom = torch.zeros(2, 3), [torch.zeros(2, 3)]
    grad = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, -4.0]])
    momentum_step([p], (grad,), mom, [0.1], 1.0)
    assert torch.equal(p, 0.1 * grad.sign())
    assert torch.allclose(mom[0], grad / grad.abs().mean(1, keepdim=True))


def _cloak(x, lesion, strength, **options):
    profile = dataclasses.replace(Profile(name="cloak"), strength=strength, options={"iterations": 2, **options})
    return torch.as_tensor(np.asarray(_run_engine(get_engine(profile, "cpu"), x, lesion, [])[0]))


def test_the_cloaks_step_options_reach_the_spread_design_too(shared_data):
    prep = _prepare(read_dicom(sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[0]),
                    None, None, False)
    for strength in ("discreet", "standard"):
        plain = _cloak(prep["x"], prep["lesion"], strength)
        assert torch.equal(plain, _cloak(prep["x"], prep["lesion"], strength))  # deterministic
        assert not torch.equal(plain, _cloak(prep["x"], prep["lesion"], strength, ti_sigma=1.5, cloak_step="l2"))
