"""Engine invariants on small inputs: lesion untouched, region bound, determinism, CPU path, RGB."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from miadmark.engine import Profile, get_engine
from miadmark.surrogates import surrogate_paths

torch.set_num_threads(1)

FAST = {"iterations": 2, "candidates": 3}
PAPER_FAST = {"population": 4, "generations": 1}

pytestmark = pytest.mark.skipif(not surrogate_paths(), reason="no surrogate weights committed")


def chest(n: int = 3) -> torch.Tensor:
    npz = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray28" / "pneumoniamnist.npz"
    if npz.exists():
        a = np.load(npz)["val_images"][:n].astype(np.float32) / 255
        return torch.from_numpy(a)[:, None]
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def brainlike(n: int = 2, c: int = 1, size: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((yy ** 2 / 0.8 + xx ** 2 / 0.6) < 1).float()
    x = head * (0.4 + 0.3 * torch.rand(n, c, size, size, generator=g))
    return x.clamp(0, 1)


def disk(n: int, size: int, cy: int, cx: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)[None].expand(n, -1, -1).clone()


def box_area(p) -> int:
    y0, x0, y1, x1 = p["box"]
    return (y1 - y0) * (x1 - x0)


@pytest.mark.parametrize("name,opts", [("transfer", FAST), ("paper", PAPER_FAST)])
def test_lesion_pixels_untouched_and_region_bound(name, opts):
    x = brainlike(2, 1, 96)
    lesion = disk(2, 96, 40, 50, 14)
    res = get_engine(Profile(name=name, options=opts), "cpu").watermark(x, lesion, [])
    assert res.images.shape == x.shape and res.images.dtype == torch.float32
    assert torch.equal(res.images[:, 0][lesion], x[:, 0][lesion])
    changed = (res.images != x).any(1)
    assert changed.any(), "the watermark must change something"
    for i, p in enumerate(res.params):
        assert box_area(p) <= 96 * 96 / 9 + 1e-9
        y0, x0, y1, x1 = p["box"]
        inside = torch.zeros(96, 96, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert not (changed[i] & ~inside).any(), "pixels changed outside the logo box"
        assert not (lesion[i][y0:y1, x0:x1]).any(), "a lesion-free box existed and must be used"
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1


def test_determinism_with_seed():
    x = chest(3)
    a = get_engine(Profile(name="transfer", seed=7, options=FAST), "cpu").watermark(x, None, [])
    b = get_engine(Profile(name="transfer", seed=7, options=FAST), "cpu").watermark(x, None, [])
    assert torch.equal(a.images, b.images)
    assert [p["box"] for p in a.params] == [p["box"] for p in b.params]
    pa = get_engine(Profile(name="paper", seed=3, options=PAPER_FAST), "cpu").watermark(x, None, [])
    pb = get_engine(Profile(name="paper", seed=3, options=PAPER_FAST), "cpu").watermark(x, None, [])
    assert torch.equal(pa.images, pb.images)


def test_gradcam_lesion_when_none_is_respected():
    x = chest(2)
    eng = get_engine(Profile(name="transfer", options=FAST), "cpu")
    from miadmark.engine.ensemble import gradcam_lesion

    les = gradcam_lesion(eng.ensemble, x, eng.cam_threshold_default)
    res = eng.watermark(x, None, [])
    assert res.params[0]["lesion"].startswith("gradcam")
    assert torch.equal(res.images[:, 0][les], x[:, 0][les])


def test_rgb_and_odd_resolution_cpu():
    x = brainlike(2, 3, 80)[:, :, :, :72].contiguous()  # 80 x 72, RGB
    res = get_engine(Profile(name="transfer", options=FAST), "cpu").watermark(x, None, [])
    assert res.images.shape == x.shape and res.images.device.type == "cpu"
    y0, x0, y1, x1 = res.params[0]["box"]
    assert (y1 - y0) * (x1 - x0) <= math.ceil(80 * 72 / 9)
    d = (res.images - x)[0]
    # the logo goes into all channels
    assert all(bool((d[ch] != 0).any()) for ch in range(3))


def test_linf_option_stays_in_budget_and_off_lesion():
    x = brainlike(1, 1, 64)
    lesion = disk(1, 64, 32, 32, 8)
    res = get_engine(Profile(name="transfer", options={**FAST, "linf": 4}), "cpu").watermark(x, lesion, [])
    y0, x0, y1, x1 = res.params[0]["box"]
    d = (res.images - x)[0, 0]
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert float(d[outside].abs().max()) <= 4 / 255 + 1e-6
    assert torch.equal(res.images[0, 0][lesion[0]], x[0, 0][lesion[0]])
