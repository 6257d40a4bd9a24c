"""What a watermark may do to an image, in one place (the iterative `cloak` engine and the one-pass
generator of `fast` both compose through here and check their output here).

Two parts, on model-domain images in [0, 1] (the display window):
* the logo: inside one box of at most `max_area_fraction` of the image (1/9), placed off the lesion;
  see-through, out = (1 - a) x + a t with a <= `alpha_cap` (0.5) at every pixel and t in [0, 1], no
  backing plate: every pixel of the box keeps at least half of the original, so a reader still reads
  the anatomy under the logo;
* the cloak: an imperceptible perturbation over the rest of the image, at most `cloak_linf` (grey
  levels of 255) times a perceptual mask (1 on texture, `flat_weight` on flat tissue, `background_weight`
  on background), and scaled down where needed so that the PSNR outside the box stays >= `psnr_min`.
Neither part touches a lesion pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .logo import box_size  # noqa: F401 - the box's size rule lives with the logo; re-exported here
from .profile import DEFAULT_STRENGTH, STRENGTHS


@dataclass(frozen=True)
class Budget:
    max_area_fraction: float = 1 / 9
    alpha_cap: float = 0.5  # the logo's opacity cap at every pixel of the box
    cloak_linf: float = 8.0  # grey levels of 255, on the most textured pixels (the PSNR bound binds first)
    flat_weight: float = 0.25  # fraction of cloak_linf allowed on flat tissue
    background_weight: float = 0.0  # on background (air: grey below `background_level`)
    background_level: float = 0.04
    psnr_min: float = 40.0  # dB outside the box, in the display window
    psnr_margin: float = 0.5  # the engine aims this much higher (8-bit rounding downstream)
    texture_window: int = 7  # local standard deviation window (pixels at full resolution)


@dataclass(frozen=True)
class Level:
    """One strength level: the mark's design and the budget every output of that level is checked against.
    coverage_max: the fraction of the image the visible mark may touch (box design: its box's area)."""

    design: str  # "box": see-through logo in one box (+ cloak); "spread": the keyed lattice over the image
    alpha_cap: float  # the mark's opacity cap at every pixel
    coverage_max: float
    psnr_min: float  # the cloak's PSNR outside the mark, dB
    cloak_linf: float = 8.0


# The levels' numbers, in one table, chosen from the measured frontier (docs/evaluation/frontier.md, spread.md).
LEVELS: dict[str, Level] = {
    "discreet": Level("box", alpha_cap=0.5, coverage_max=1 / 9, psnr_min=40.0),
    "standard": Level("spread", alpha_cap=0.2, coverage_max=0.45, psnr_min=40.0),
    "strong": Level("spread", alpha_cap=0.3, coverage_max=0.55, psnr_min=36.0, cloak_linf=12.0),
}
assert tuple(LEVELS) == STRENGTHS


def level_of(strength: str | None) -> Level:
    name = strength or DEFAULT_STRENGTH
    if name not in LEVELS:
        raise ValueError(f"unknown strength {name!r} (known: {', '.join(STRENGTHS)})")
    return LEVELS[name]


def level_budget(strength: str | None, overrides: dict, box_fraction: float) -> Budget:
    """The Budget of a strength level with an engine's option overrides (options.BudgetOptions.budget_fields);
    the box design's area bound is the profile's box (`box_fraction`) unless coverage_max is given."""
    lv = level_of(strength)
    over = dict(overrides)
    cover = over.pop("coverage_max", box_fraction if lv.design == "box" else lv.coverage_max)
    fields = {"alpha_cap": lv.alpha_cap, "psnr_min": lv.psnr_min, "cloak_linf": lv.cloak_linf, **over}
    return Budget(max_area_fraction=float(cover), **fields)


def compose_mark(images: torch.Tensor, lesion: torch.Tensor, mark: torch.Tensor, alpha: torch.Tensor,
                 texture: torch.Tensor, cloak: torch.Tensor | None, cloak_mask: torch.Tensor | None,
                 budget: Budget) -> torch.Tensor:
    """`compose` for a mark of any shape: mark (N, H, W) bool, where the visible layer may go; alpha (N, 1, H, W)
    clamped to [0, alpha_cap] and zeroed off the mark; texture (N, 1 or C, H, W) clamped to [0, 1]; the cloak
    (N, 1 or C, H, W) in [-1, 1] times cloak_mask, scaled so that the PSNR outside the mark stays >= psnr_min."""
    if not torch.is_grad_enabled():  # the same arithmetic in place: no fresh full-size tensor per step
        return _compose_mark_in_place(images, lesion, mark, alpha, texture, cloak, cloak_mask, budget)
    on = mark[:, None].float()
    a = alpha.clamp(0, budget.alpha_cap) * on * (~lesion[:, None]).float()
    out = images + a * (texture.clamp(0, 1) - images)
    if cloak is not None:
        d = cloak.clamp(-1, 1) * cloak_mask * (budget.cloak_linf / 255.0) * (1 - on)
        mse = (d * d).flatten(1).sum(1) / ((1 - on).flatten(1).sum(1) * d.shape[1]).clamp_min(1)
        target = 10 ** (-(budget.psnr_min + budget.psnr_margin) / 10)
        scale = (target / mse.detach().clamp_min(1e-12)).sqrt().clamp(max=1.0)
        out = out + d * scale.view(-1, 1, 1, 1)
    out = out.clamp(0, 1)
    return torch.where(lesion[:, None].expand_as(images), images, out)


def _compose_mark_in_place(images, lesion, mark, alpha, texture, cloak, cloak_mask, budget: Budget) -> torch.Tensor:
    """compose_mark's values, bit for bit, with the intermediate tensors reused (no autograd)."""
    off = (~mark[:, None]).float()  # 1 - on, exactly
    a = alpha.clamp(0, budget.alpha_cap).mul_(mark[:, None]).mul_((~lesion[:, None]).float())
    out = texture.clamp(0, 1) - images
    out = (out.mul_(a) if out.shape == a.shape else a * out).add_(images)
    if cloak is not None:
        d = cloak.clamp(-1, 1).mul_(cloak_mask).mul_(budget.cloak_linf / 255.0).mul_(off)
        mse = (d * d).flatten(1).sum(1) / (off.flatten(1).sum(1) * d.shape[1]).clamp_min(1)
        target = 10 ** (-(budget.psnr_min + budget.psnr_margin) / 10)
        scale = (target / mse.clamp_min(1e-12)).sqrt().clamp(max=1.0)
        out.add_(d.mul_(scale.view(-1, 1, 1, 1)))
    return torch.where(lesion[:, None].expand_as(images), images, out.clamp_(0, 1))


def violations_mark(images: torch.Tensor, out: torch.Tensor, lesion: torch.Tensor, mark: torch.Tensor,
                    budget: Budget, tol: float = 1.5 / 255) -> list[str]:
    """`violations` for a mark of any shape (N, H, W) bool: lesion pixels changed, the mark covering more than
    max_area_fraction of an image, a mark pixel keeping less than (1 - alpha_cap) of the original, a pixel off
    the mark beyond the cloak's L-inf budget, PSNR off the mark below psnr_min."""
    n, c, h, w = images.shape
    bad = []
    changed = lesion[:, None] & (out != images)
    if bool(changed.any()):
        bad.append(f"{int(changed.sum())} lesion pixel values changed")
    cover = mark.flatten(1).float().mean(1)
    for i in torch.nonzero(cover > budget.max_area_fraction + 1e-6).flatten().tolist():
        bad.append(f"image {i}: the mark covers {float(cover[i]):.4f} of the image, "
                   f"over {budget.max_area_fraction:.4f}")
    inside = mark[:, None].expand_as(images)
    k = 1 - budget.alpha_cap
    if bool((inside & ((out < k * images - tol) | (out > k * images + budget.alpha_cap + tol))).any()):
        bad.append(f"a mark pixel keeps less than (1 - alpha_cap) = {k:g} of the original")
    d = out - images
    if bool(((~inside) & (d.abs() > budget.cloak_linf / 255.0 + tol)).any()):
        bad.append(f"cloak beyond {budget.cloak_linf:g}/255 off the mark")
    outside = (~inside).float()
    mse = (d * d * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)
    worst = float(mse.max()) if len(mse) else 0.0
    if worst > 0 and 10 * torch.log10(torch.tensor(1 / worst)) < budget.psnr_min - 0.05:
        bad.append(f"PSNR off the mark {10 * torch.log10(torch.tensor(1 / worst)):.2f} dB < {budget.psnr_min}")
    return bad


# The logo stays a logo: its opacity on the strokes never falls below ALPHA_MIN and its texture stays bright
# (>= STROKE_MIN), so a reader sees it is watermarked (cloak's `alpha_min` / `stroke_min` defaults, fast's range).
ALPHA_MIN = 0.25
STROKE_MIN = 0.5


def upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) maps at low resolution -> (N, C, *size), bilinear (smooth)."""
    t = t if t.dim() == 4 else t[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def logo_layers(shape: torch.Tensor, alpha: torch.Tensor, texture: torch.Tensor, box_hw: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logo's opacity and texture in its box at full resolution, as `compose` takes them: the low-res
    alpha and texture maps upsampled into the box, the opacity times the logo's shape (bh, bw) in [0, 1]."""
    return shape * upsample(alpha, box_hw), upsample(texture, box_hw)


def box_mask(n: int, h: int, w: int, boxes: list[list[int]], device=None) -> torch.Tensor:
    """(N, H, W) bool, True inside each image's box [y0, x0, y1, x1]."""
    m = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = True
    return m


def row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=1) (linear interpolation), bit for bit, by selection instead of a full sort:
    3-5x faster on the 512 px slices, where the sort was a fifth of `fast`'s time."""
    n = x.shape[1]
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)  # as torch.quantile computes it, in x's dtype
    lo, hi = int(rank.floor()), int(rank.ceil())
    below = x.kthvalue(lo + 1, dim=1).values
    above = x.kthvalue(hi + 1, dim=1).values if hi != lo else below
    return torch.lerp(below, above, (rank - rank.floor()).expand_as(below))


def perceptual_mask(images: torch.Tensor, frozen: torch.Tensor, budget: Budget, size: int | None = None
                    ) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: where the cloak may go and how strongly. Local contrast (standard deviation
    in a small window, relative to the image's 90th percentile of it) maps flat tissue to `flat_weight`
    and texture to 1 (texture masks a change, a flat region shows it); background gets
    `background_weight`; `frozen` (N, H, W) bool (lesion, box) gets 0.

    size: the resolution the watermark is made at (the surrogates' S). Given and below the image's, the
    contrast is measured on the image at S (area-averaged, the window scaled with it) and upsampled: the
    cloak carries no detail finer than S, so neither need its mask, and a smooth mask is cheaper to
    measure and to keep in the record. The background and `frozen` are still decided per full-resolution
    pixel, so the budget's zeros stay exact."""
    n, _, h, w = images.shape
    g = images.mean(1, keepdim=True)
    scale = 1.0 if size is None or size >= max(h, w) else size / max(h, w)
    if scale < 1.0:
        low = (max(1, round(h * scale)), max(1, round(w * scale)))
        g = F.adaptive_avg_pool2d(g, low)
    k = max(3, round(int(budget.texture_window) * scale)) | 1
    mu = F.avg_pool2d(F.pad(g, (k // 2,) * 4, mode="replicate"), k, 1)
    var = F.avg_pool2d(F.pad(g * g, (k // 2,) * 4, mode="replicate"), k, 1) - mu * mu
    sd = var.clamp_min(0).sqrt()
    ref = row_quantile(sd.flatten(1)[:, ::max(1, sd[0].numel() // 100_000)], 0.9).clamp_min(1e-3)
    m = budget.flat_weight + (1 - budget.flat_weight) * (sd / ref.view(-1, 1, 1, 1)).clamp(0, 1)
    if scale < 1.0:  # upsampled, bilinear: values stay within [flat_weight, 1]
        m, mu = upsample(torch.cat([m, mu], 1), (h, w)).split(1, 1)
    m = torch.where(mu < budget.background_level, torch.full_like(m, budget.background_weight), m)
    return m * (~frozen[:, None]).float()


def compose(images: torch.Tensor, lesion: torch.Tensor, boxes: list[list[int]], alpha: torch.Tensor,
            texture: torch.Tensor, cloak: torch.Tensor | None, cloak_mask: torch.Tensor | None,
            budget: Budget) -> torch.Tensor:
    """The watermarked images (differentiable in alpha, texture and cloak).

    images (N, C, H, W); lesion (N, H, W) bool; boxes per image, all of one size (bh, bw);
    alpha (N, 1, bh, bw) the logo's opacity (logo shape times its alpha map), clamped here to
    [0, alpha_cap]; texture (N, 1 or C, bh, bw), clamped to [0, 1]; cloak (N, 1 or C, H, W) in
    [-1, 1] (clamped) times cloak_mask (N, 1, H, W) from `perceptual_mask` (0 in box and lesion)."""
    n, c, h, w = images.shape
    a = alpha.clamp(0, budget.alpha_cap)
    t = texture.clamp(0, 1)
    A, T = [], []
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        pad = (x0, w - x1, y0, h - y1)
        A.append(F.pad(a[i], pad))
        T.append(F.pad(t[i], pad))
    A = torch.stack(A) * (~lesion[:, None]).float()
    out = images + A * (torch.stack(T) - images)
    if cloak is not None:
        d = cloak.clamp(-1, 1) * cloak_mask * (budget.cloak_linf / 255.0)
        outside = (~box_mask(n, h, w, boxes, images.device))[:, None].float()
        mse = (d * d * outside).flatten(1).sum(1) / (outside.flatten(1).sum(1) * d.shape[1]).clamp_min(1)
        target = 10 ** (-(budget.psnr_min + budget.psnr_margin) / 10)
        scale = (target / mse.detach().clamp_min(1e-12)).sqrt().clamp(max=1.0)
        out = out + d * outside * scale.view(-1, 1, 1, 1)
    out = out.clamp(0, 1)
    return torch.where(lesion[:, None].expand_as(images), images, out)


def violations(images: torch.Tensor, out: torch.Tensor, lesion: torch.Tensor, boxes: list[list[int]],
               budget: Budget, tol: float = 1.5 / 255) -> list[str]:
    """What `out` breaks of the budget (empty when it keeps it), from the images alone: lesion pixels
    changed, a box over the area bound, a box pixel keeping less than (1 - alpha_cap) of the original
    (out must lie in [(1 - a) x, (1 - a) x + a]), a cloak pixel beyond its L-inf budget, PSNR outside
    the box below psnr_min; and anything it cannot check (a shape, a box per image, a non-finite value) is
    broken too. `tol` absorbs rounding to stored values (8 bits and a window). Whole-batch tensor operations over
    the images, and each box checked on its own slice: no full-size mask per box."""
    if out.shape != images.shape or len(boxes) != images.shape[0] or lesion.shape != images[:, 0].shape:
        return [f"output {tuple(out.shape)}, {len(boxes)} box(es) and lesion {tuple(lesion.shape)} do not match "
                f"the images {tuple(images.shape)}"]
    n, c, h, w = images.shape
    diff = out - images
    if not bool(torch.isfinite(diff).all()):
        return ["non-finite output values"]
    bad = []
    lesion_changed = int((diff != 0).logical_and_(lesion[:, None]).sum()) if bool(lesion.any()) else 0
    if lesion_changed:
        bad.append(f"{lesion_changed} lesion pixel values changed")
    # whole images: |d| over the cloak's bound and d^2; each box's share is then taken out on its own slice
    over_bound = (diff.abs() > budget.cloak_linf / 255.0 + tol).flatten(1).sum(1)
    squares = diff * diff
    sq_sum = squares.flatten(1).sum(1)
    outside_px = torch.full((n,), float(h * w), dtype=sq_sum.dtype, device=sq_sum.device)
    k = 1 - budget.alpha_cap
    box_broken = False
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        if (y1 - y0) * (x1 - x0) > budget.max_area_fraction * h * w + 1e-6:
            bad.append(f"image {i}: box {(y1 - y0)}x{(x1 - x0)} over {budget.max_area_fraction:.4f} of the image")
        ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        if ya >= yb or xa >= xb:
            continue  # an empty box: every pixel is outside it
        lo = k * images[i, :, ya:yb, xa:xb] - tol
        box = out[i, :, ya:yb, xa:xb]
        box_broken |= bool(((box < lo) | (box > lo + budget.alpha_cap + 2 * tol)).any())
        inner = diff[i, :, ya:yb, xa:xb]
        over_bound[i] -= (inner.abs() > budget.cloak_linf / 255.0 + tol).sum()
        sq_sum[i] -= squares[i, :, ya:yb, xa:xb].sum()
        outside_px[i] -= (yb - ya) * (xb - xa)
    if box_broken:
        bad.append("a box pixel keeps less than (1 - alpha_cap) of the original")
    if bool((over_bound > 0).any()):
        bad.append(f"cloak beyond {budget.cloak_linf:g}/255 outside the box")
    mse = sq_sum.clamp_min(0) / (outside_px * c).clamp_min(1)
    worst = float(mse.max()) if len(mse) else 0.0
    if worst > 0 and 10 * torch.log10(torch.tensor(1 / worst)) < budget.psnr_min - 0.05:
        bad.append(f"PSNR outside the box {10 * torch.log10(torch.tensor(1 / worst)):.2f} dB < {budget.psnr_min}")
    return bad
