"""Every classifier architecture exposes a spatial feature map (Grad-CAM, feature losses) and logits."""

import pytest
import torch

from miadmark.engine.ensemble import Ensemble
from miadmark.surrogates.models import ARCHS, build
from miadmark.surrogates.train import save


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_features_are_a_spatial_map_and_head_gives_logits(arch):
    torch.manual_seed(0)
    m = build(arch, 3, 7, 64).eval()
    x = torch.rand(2, 3, 64, 64)
    f = m.features(x)
    assert f.ndim == 4 and f.shape[0] == 2 and f.shape[2] >= 2 and f.shape[3] >= 2
    assert m.head(f).shape == (2, 7)
    assert torch.allclose(m(x), m.head(f))


def test_vit_tokens_are_16px_patches_and_other_sizes_resample_positions():
    m = build("vit", 1, 4, 128).eval()
    assert m.features(torch.rand(1, 1, 128, 128)).shape[-2:] == (8, 8)
    assert m(torch.rand(1, 1, 96, 96)).shape == (1, 4)  # 6x6 tokens, positions resampled from 8x8


def test_vit_saved_loads_into_the_engine_ensemble_and_gives_a_gradcam(tmp_path):
    torch.manual_seed(0)
    m = build("vit", 1, 2, 64)
    save(m, {"arch": "vit", "in_ch": 1, "in_size": 64, "classes": ["normal", "tumor"]}, tmp_path / "v.pt")
    ens = Ensemble([tmp_path / "v.pt"], torch.device("cpu"))
    x = torch.rand(2, 1, 64, 64)
    cam = ens.gradcam(x)
    assert cam.shape == (2, 64, 64) and torch.isfinite(cam).all() and float(cam.amax()) == pytest.approx(1.0)
