"""The watermark's constraints (miadmark.engine.constraints) and the `cloak` engine's box design (strength
`discreet`) that obeys them, on small inputs: alpha cap in the box, cloak budget and PSNR, lesion untouched,
determinism, CPU path. The spread levels: test_engine_strength.py."""

from __future__ import annotations

import pytest
import torch

from miadmark.engine import GPU_PROFILE, Profile, get_engine
from miadmark.engine import constraints as C
from miadmark.surrogates import surrogate_paths

torch.set_num_threads(1)

FAST = {"iterations": 3, "candidates": 3}
BOX = "discreet"  # the box design's level


def head(n: int = 2, c: int = 1, size: int = 96) -> torch.Tensor:
    """A bright textured ellipse on black (background) with a flat band (flat tissue)."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = ((yy ** 2 / 0.8 + xx ** 2 / 0.6) < 1).float()
    x = inside * (0.4 + 0.3 * torch.rand(n, c, size, size, generator=g))
    x[..., size // 2 - 6:size // 2 + 6, size // 4:3 * size // 4] = 0.5  # flat band
    return x.clamp(0, 1)


def disk(n: int, size: int, cy: int, cx: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)[None].expand(n, -1, -1).clone()


def test_compose_caps_alpha_keeps_lesion_and_cloak_budget():
    budget = C.Budget(cloak_linf=8)
    x = head(2, 1, 96)
    lesion = disk(2, 96, 30, 30, 8)
    bh, bw = C.box_size(96, 96, budget.max_area_fraction)
    boxes = [[20, 20, 20 + bh, 20 + bw], [50, 40, 50 + bh, 40 + bw]]  # the first overlaps the lesion
    alpha = torch.ones(2, 1, bh, bw)  # asks for an opaque logo: the cap must hold
    texture = torch.ones(2, 1, bh, bw)
    frozen = lesion | C.box_mask(2, 96, 96, boxes)
    cmask = C.perceptual_mask(x, frozen, budget)
    cloak = torch.ones(2, 1, 96, 96)  # the whole budget everywhere
    out = C.compose(x, lesion, boxes, alpha, texture, cloak, cmask, budget)
    assert torch.equal(out[:, 0][lesion], x[:, 0][lesion])
    assert C.violations(x, out, lesion, boxes, budget, tol=1e-6) == []
    y0, x0, y1, x1 = boxes[1]
    reg_x, reg_o = x[1, 0, y0:y1, x0:x1], out[1, 0, y0:y1, x0:x1]
    assert torch.allclose(reg_o, 0.5 * reg_x + 0.5, atol=1e-6)  # alpha 1 asked, 0.5 given: half the original
    outside = ~C.box_mask(2, 96, 96, boxes)
    assert float(((out - x).abs()[:, 0] * outside).max()) <= 8 / 255 + 1e-6
    mse = (((out - x)[:, 0] ** 2) * outside).flatten(1).sum(1) / outside.flatten(1).sum(1)
    assert float((10 * torch.log10(1 / mse)).min()) >= budget.psnr_min  # the PSNR cap scaled the cloak down


def test_perceptual_mask_texture_over_flat_over_background():
    budget = C.Budget()
    x = head(1, 1, 96)
    m = C.perceptual_mask(x, torch.zeros(1, 96, 96, dtype=torch.bool), budget)[0, 0]
    assert float(m[2, 2]) == 0.0  # background (air)
    flat = float(m[48, 40])
    textured = float(m[25, 48])
    assert flat == pytest.approx(budget.flat_weight, abs=0.05)
    assert textured > 2 * flat
    frozen = disk(1, 96, 25, 48, 5)
    assert float(C.perceptual_mask(x, frozen, budget)[0, 0, 25, 48]) == 0.0


def test_violations_name_what_is_broken():
    budget = C.Budget()
    x = head(1, 1, 96)
    lesion = disk(1, 96, 70, 48, 6)
    bh, bw = C.box_size(96, 96, budget.max_area_fraction)
    boxes = [[10, 30, 10 + bh, 30 + bw]]
    opaque = x.clone()
    opaque[..., 10:10 + bh, 30:30 + bw] = 1.0  # an opaque plate
    assert any("box pixel" in v for v in C.violations(x, opaque, lesion, boxes, budget))
    noisy = (x + 10 / 255).clamp(0, 1)
    noisy[:, 0][lesion] = x[:, 0][lesion]
    v = C.violations(x, noisy, lesion, boxes, budget)
    assert any("cloak" in s for s in v) and any("PSNR" in s for s in v)
    touched = x.clone()
    touched[:, 0][lesion] += 0.01
    assert any("lesion" in s for s in C.violations(x, touched, lesion, boxes, budget))
    big = [[0, 0, 40, 40]]
    assert any("over" in s for s in C.violations(x, x, lesion, big, budget))


needs_weights = pytest.mark.skipif(not surrogate_paths(), reason="no surrogate weights committed")


@needs_weights
def test_gpu_default_is_cloak_and_its_discreet_level_keeps_the_box_constraints():
    assert GPU_PROFILE == "cloak"
    x = head(2, 1, 96)
    lesion = disk(2, 96, 40, 50, 12)
    prof = Profile(name="cloak", options=FAST, strength=BOX)
    res = get_engine(prof, "cpu").watermark(x, lesion, [])
    assert res.images.shape == x.shape and res.images.dtype == torch.float32
    assert torch.equal(res.images[:, 0][lesion], x[:, 0][lesion])
    boxes = [p["box"] for p in res.params]
    assert C.violations(x, res.images, lesion, boxes, C.Budget(), tol=1e-6) == []
    assert not bool((C.box_mask(2, 96, 96, boxes) & lesion).any())  # the box is off the lesion
    outside = ~C.box_mask(2, 96, 96, boxes)
    assert bool(((res.images != x)[:, 0] & outside).any())  # the cloak is there
    assert res.params[0]["alpha_cap"] == 0.5 and res.params[0]["engine"] == "cloak"


@needs_weights
def test_cloak_is_deterministic_with_a_seed_and_runs_rgb_on_cpu():
    x = head(2, 1, 80)
    a = get_engine(Profile(name="cloak", seed=3, options=FAST, strength=BOX), "cpu").watermark(x, None, [])
    b = get_engine(Profile(name="cloak", seed=3, options=FAST, strength=BOX), "cpu").watermark(x, None, [])
    assert torch.equal(a.images, b.images) and a.params == [{**p, "seconds": q["seconds"]}
                                                             for p, q in zip(b.params, a.params)]
    rgb = head(1, 3, 72)
    res = get_engine(Profile(name="cloak", options=FAST, strength=BOX), "cpu").watermark(rgb, None, [])
    assert res.images.shape == rgb.shape and res.images.device.type == "cpu"
    assert C.violations(rgb, res.images, torch.zeros(1, 72, 72, dtype=torch.bool),
                        [p["box"] for p in res.params], C.Budget(), tol=1e-6) == []


@needs_weights
def test_budget_options_reach_the_engine():
    x = head(1, 1, 96)
    prof = Profile(name="cloak", options={**FAST, "cloak_linf": 1}, strength=BOX)
    small = get_engine(prof, "cpu").watermark(x, None, [])
    box = C.box_mask(1, 96, 96, [small.params[0]["box"]])[:, None]
    assert float(((small.images - x).abs() * ~box).max()) <= 1 / 255 + 1e-6
    assert small.params[0]["cloak_linf"] == 1


@needs_weights
def test_translation_invariant_cloak_keeps_the_budget_and_changes_the_cloak():
    x = head(1, 1, 96)
    lesion = disk(1, 96, 40, 50, 12)
    off = get_engine(Profile(name="cloak", seed=2, options=FAST, strength=BOX), "cpu").watermark(x, lesion, [])
    prof = Profile(name="cloak", seed=2, options={**FAST, "ti_sigma": 1.5}, strength=BOX)
    ti = get_engine(prof, "cpu").watermark(x, lesion, [])
    assert C.violations(x, ti.images, lesion, [ti.params[0]["box"]], C.Budget(), tol=1e-6) == []
    assert not torch.equal(off.images, ti.images)


def test_compose_mark_without_autograd_gives_the_same_values_bit_for_bit():
    """The in-place path (no autograd: fast, the final composite) and the differentiable one agree exactly."""
    torch.manual_seed(1)
    n, h, w = 3, 64, 48
    budget = C.level_budget("strong", {}, 1 / 9)
    for c, tc, cc in ((1, 1, 1), (3, 1, 1), (3, 3, 3), (3, 1, 3), (3, 3, 1)):
        images, lesion, mark = torch.rand(n, c, h, w), torch.rand(n, h, w) > 0.9, torch.rand(n, h, w) > 0.5
        alpha, texture = torch.rand(n, 1, h, w), torch.rand(n, tc, h, w) * 1.4 - 0.2
        cloak, cmask = torch.rand(n, cc, h, w) * 3 - 1.5, torch.rand(n, 1, h, w)
        inputs = [t.clone() for t in (images, alpha, texture, cloak, cmask)]
        for cl in (cloak, None):
            with torch.enable_grad():
                want = C.compose_mark(images, lesion, mark, alpha, texture, cl, cmask, budget)
            with torch.no_grad():
                got = C.compose_mark(images, lesion, mark, alpha, texture, cl, cmask, budget)
            assert torch.equal(want, got), (c, tc, cc, cl is None)
        assert all(torch.equal(a, b) for a, b in zip(inputs, (images, alpha, texture, cloak, cmask)))  # untouched


def test_mark_layers_without_autograd_give_the_same_values_bit_for_bit():
    from miadmark.engine.spread import Marks, mark_layers

    torch.manual_seed(2)
    strokes = torch.rand(3, 1, 40, 56)
    marks = Marks(strokes, strokes[:, 0] > 0.3, [])
    budget = C.level_budget("standard", {}, 1 / 9)
    low = [torch.rand(3, 1, 8, 8) * 1.4 - 0.2 for _ in range(2)]
    with torch.enable_grad():
        want = mark_layers(marks, *low, (40, 56), budget, 1.0, 0.5)
    with torch.no_grad():
        got = mark_layers(marks, *low, (40, 56), budget, 1.0, 0.5)
    assert all(torch.equal(w, g) for w, g in zip(want, got))
