"""The perceptual mask made at the watermark's resolution and the batch-wide `violations`: the budget's bounds
still hold on the output, and whatever cannot be checked fails closed."""

from __future__ import annotations

import torch

from miadmark.engine import constraints as C

from test_engine_constraints import disk, head

torch.set_num_threads(1)


def test_the_mask_at_the_watermarks_resolution_keeps_the_budgets_zeros_and_bounds():
    budget = C.Budget()
    x = head(2, 1, 384)
    x[..., 150:230, 100:280] = 0.5  # flat tissue wider than a pixel at S
    frozen = disk(2, 384, 100, 190, 20)
    full = C.perceptual_mask(x, frozen, budget)
    low = C.perceptual_mask(x, frozen, budget, size=96)
    assert low.shape == full.shape == (2, 1, 384, 384)
    assert float(low.min()) >= 0 and float(low.max()) <= 1
    assert float(low[:, 0][frozen].abs().max()) == 0.0  # lesion and box: exactly nothing
    air = x[:, 0] == 0  # the black around the head
    far_air = air & ~torch.nn.functional.max_pool2d((~air).float()[:, None], 31, 1, 15)[:, 0].bool()
    assert float(low[:, 0][far_air].abs().max()) == budget.background_weight
    tissue = (low[:, 0] > 0) & ~frozen
    assert float(low[:, 0][tissue].min()) >= budget.background_weight
    inner = ~air & ~torch.nn.functional.max_pool2d(air.float()[:, None], 31, 1, 15)[:, 0].bool() & ~frozen
    assert float(low[:, 0][inner].min()) >= budget.flat_weight - 1e-6  # tissue gets at least the flat weight
    flat = float(low[:, 0, 165:215, 115:265].max())
    assert flat == torch.tensor(budget.flat_weight).item() and float(low[:, 0][inner].mean()) > 2 * flat
    assert float((low - full).abs().max()) <= 1  # both within the same bounds


def test_a_watermark_through_the_low_resolution_mask_keeps_every_bound():
    budget = C.Budget(cloak_linf=8)
    x = head(3, 1, 256)
    lesion = disk(3, 256, 80, 80, 12)
    bh, bw = C.box_size(256, 256, budget.max_area_fraction)
    boxes = [[150, 60, 150 + bh, 60 + bw], [20, 120, 20 + bh, 120 + bw], [100, 100, 100 + bh, 100 + bw]]
    frozen = lesion | C.box_mask(3, 256, 256, boxes)
    cmask = C.perceptual_mask(x, frozen, budget, size=64)
    cloak = torch.sign(torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0)))
    out = C.compose(x, lesion, boxes, torch.full((3, 1, bh, bw), 0.9), torch.ones(3, 1, bh, bw),
                    C.upsample(cloak, (256, 256)), cmask, budget)
    assert C.violations(x, out, lesion, boxes, budget, tol=1e-6) == []
    outside = ~C.box_mask(3, 256, 256, boxes)
    assert float(((out - x).abs()[:, 0] * outside).max()) <= 8 / 255 + 1e-6
    mse = (((out - x)[:, 0] ** 2) * outside).flatten(1).sum(1) / outside.flatten(1).sum(1)
    assert float((10 * torch.log10(1 / mse)).min()) >= budget.psnr_min
    assert torch.equal(out[:, 0][lesion], x[:, 0][lesion])


def test_violations_over_a_batch_equal_each_image_alone_and_name_the_bad_one():
    budget = C.Budget()
    x = head(4, 1, 96)
    lesion = disk(4, 96, 70, 48, 6)
    bh, bw = C.box_size(96, 96, budget.max_area_fraction)
    boxes = [[10, 30, 10 + bh, 30 + bw]] * 3 + [[0, 0, 40, 40]]  # the last box is over the area bound
    out = x.clone()
    out[1, :, 10:10 + bh, 30:30 + bw] = 1.0  # image 1: an opaque plate
    out[2] = (out[2] + 10 / 255).clamp(0, 1)  # image 2: cloak over its budget (lesion too)
    batch = C.violations(x, out, lesion, boxes, budget)
    alone = [C.violations(x[i:i + 1], out[i:i + 1], lesion[i:i + 1], boxes[i:i + 1], budget) for i in range(4)]
    assert alone[0] == []
    for v in alone[1:]:
        assert v and all(any(s.split(":")[-1] in b for b in batch) for s in v)
    assert any(s.startswith("image 3:") for s in batch)


def test_what_violations_cannot_check_fails_closed():
    budget = C.Budget()
    x = head(2, 1, 64)
    lesion = torch.zeros(2, 64, 64, dtype=torch.bool)
    bh, bw = C.box_size(64, 64, budget.max_area_fraction)
    boxes = [[5, 5, 5 + bh, 5 + bw]] * 2
    assert C.violations(x, x, lesion, boxes, budget) == []
    nan = x.clone()
    nan[1, 0, 40, 40] = float("nan")  # every comparison with NaN is False: it must not pass for that
    assert C.violations(x, nan, lesion, boxes, budget) == ["non-finite output values"]
    assert C.violations(x, x, lesion, boxes[:1], budget)  # a box missing for an image
    assert C.violations(x, x[:, :, :32], lesion, boxes, budget)  # a cropped output
