"""The Grad-CAM lesion mask is taken for the likeliest lesion class, never for "notumor": on real
brain-MRI slices a surrogate calls normal it must mark where a tumour would be."""

from __future__ import annotations

import pytest
import torch

from miadmark.engine.ensemble import Ensemble
from miadmark.surrogates import DEFAULT_SURROGATES, surrogate_paths

from test_engine_objective import brain_slices

pytestmark = pytest.mark.skipif(not surrogate_paths(), reason="no surrogate weights committed")
torch.set_num_threads(1)


@pytest.mark.parametrize("name", DEFAULT_SURROGATES)
def test_gradcam_of_a_normal_slice_is_the_likeliest_tumour_class(shared_data, name):
    one = Ensemble.get([name], torch.device("cpu"))
    assert one.classes[2] == "notumor" and one.finding.tolist() == [True, True, False, True]
    xs = one.prep(brain_slices(shared_data, 3))
    with torch.no_grad():
        z = one.models[0](xs)
    normal = z.argmax(1) == 2
    assert bool(normal.any()), "the slices must include some the model calls normal"
    tumour = z.masked_fill(~one.finding, float("-inf")).argmax(1)
    cam = one.gradcam(xs)
    assert torch.allclose(cam, one.gradcam(xs, tumour), atol=1e-6)
    cam_of_normal = one.gradcam(xs, torch.full_like(tumour, 2))
    assert not torch.allclose(cam[normal], cam_of_normal[normal], atol=1e-2)
    assert torch.allclose(cam[~normal], one.gradcam(xs, z.argmax(1))[~normal], atol=1e-6)
