"""The spread mark's support: the widest band of the strokes within the coverage bound, per image of a batch,
equal to growing each image's band by a (2r+1)-square max filter, and fail closed when nothing fits."""

import pytest
import torch
import torch.nn.functional as F

from miadmark.engine.spread import mark_support


def widest_band_by_square_filters(strokes, lesion, widen_px, coverage_max):
    """One image at a time, every radius filtered from the strokes themselves: the definition."""
    for level in (0.05, 0.25, 0.5, 0.75, 0.9):
        on = (strokes > level).float()[None, None]
        for r in range(widen_px, -1, -1):
            band = (F.max_pool2d(on, 2 * r + 1, 1, r)[0, 0] > 0) & ~lesion
            if float(band.float().mean()) <= coverage_max:
                return band
    raise ValueError


def test_batch_support_is_each_images_widest_fitting_band():
    gen = torch.Generator().manual_seed(3)
    strokes = F.avg_pool2d(torch.rand(6, 1, 96, 80, generator=gen), 5, 1, 2)[:, 0] ** 6 * 3  # sparse blobs
    lesion = torch.zeros(6, 96, 80, dtype=torch.bool)
    lesion[1, 20:50, 10:40] = True
    lesion[4, :, :30] = True
    for coverage_max in (0.05, 0.2, 0.45, 0.9):
        got = mark_support(strokes, lesion, 6, coverage_max)
        want = torch.stack([widest_band_by_square_filters(s, les, 6, coverage_max) for s, les in zip(strokes, lesion)])
        assert torch.equal(got, want), coverage_max
        assert not (got & lesion).any()
        assert (got.flatten(1).float().mean(1) <= coverage_max).all()


def test_strokes_that_cover_too_much_alone_are_refused():
    strokes = torch.ones(2, 32, 32)
    strokes[0] = 0.0  # one image fits, the other cannot: the batch fails closed
    with pytest.raises(ValueError, match="strokes alone cover 1.000"):
        mark_support(strokes, torch.zeros(2, 32, 32, dtype=torch.bool), 3, 0.5)
