"""The spread mark (strength `standard` / `strong`): a see-through lattice of the logo over the whole image
outside the lesion, its geometry drawn per image from a keyed seed, its opacity and texture optimised
against the surrogates, plus the cloak off the mark.

* Pattern: the text MIAD-MARK (or the logo) repeated on a staggered lattice (cell height `tile` of the shorter
  side), rotated, scaled,
  offset and smoothly warped (a bicubic displacement field) per image, rendered at full resolution with
  sub-pixel sampling. A reader sees a watermark; a remover that learns one image's lattice has not learnt the
  next one's (a shared, consistent watermark is removed by multi-image matting, Dekel et al. 2017).
* Geometry key: HMAC-SHA256 of the site secret and the instance (`mark_key`, set by the core), else a hash of
  the profile's seed and the SOP Instance UID: deterministic, and different for every image.
* The mark: out = (1 - a) x + a t on the lattice's strokes widened by `widen` (the free band), a <= the level's
  alpha_cap at every pixel, at least `stroke_floor` x cap on the strokes (the pattern stays readable),
  a = 0 off the mark; coverage (mark pixels / image) <= the level's coverage_max, by narrowing the band.
* Checked on every output by `constraints.violations_mark` (fail closed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from . import constraints as C
from .ascent import ascend
from .base import ImageContext, WatermarkBatch
from .logo import load_logo_rgba
from .spread_key import geometry_seed, mark_key  # noqa: F401 - the keys live torch-free; re-exported here

WARP_KNOTS = 4  # the displacement field's control grid (K x K): smooth at the scale of a few lattice cells
MIN_CELL_PX = 12.0  # a lattice cell at least this high: smaller text is a grey haze, not a watermark
MAX_ROTATION = 0.6  # radians either way (about 34 degrees): a diagonal lattice, as watermarks are


@dataclass(frozen=True)
class Geometry:
    rotation: float  # radians
    scale: float  # times the option's period
    offset: tuple[float, float]  # lattice phase (y, x), fractions of the period
    warp: tuple[float, ...]  # 2 x K x K displacement knots, fractions of the period

    def record(self) -> dict:
        return {"rotation": round(self.rotation, 5), "scale": round(self.scale, 5),
                "offset": [round(v, 5) for v in self.offset]}


def draw_geometry(seed: int, scale_jitter: float, warp: float) -> Geometry:
    rng = np.random.default_rng(seed)
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    scale = float(rng.uniform(1 - scale_jitter, 1 + scale_jitter))
    offset = (float(rng.uniform()), float(rng.uniform()))
    knots = rng.normal(0.0, warp, 2 * WARP_KNOTS * WARP_KNOTS)
    return Geometry(rotation, scale, offset, tuple(float(v) for v in knots))


MARK_TEXT = "MIAD-MARK"


@lru_cache(maxsize=4)
def _cell_hi(pattern: str, logo: str | None, mark_scale: float) -> torch.Tensor:
    """One lattice cell's shape (h, w) in [0, 1] at high resolution: the text (Pillow's built-in font, no font
    file needed) or the logo, centred, `mark_scale` of the cell's height."""
    from PIL import Image, ImageDraw, ImageFont

    if pattern == "logo":
        rgba, _ = load_logo_rgba(logo)
        shape = Image.fromarray(rgba[..., 3]).resize((256, 256), Image.LANCZOS)
    else:
        font = ImageFont.load_default(size=96)
        x0, y0, x1, y1 = font.getbbox(MARK_TEXT, stroke_width=2)
        shape = Image.new("L", (x1 - x0, y1 - y0))
        ImageDraw.Draw(shape).text((-x0, -y0), MARK_TEXT, fill=255, font=font, stroke_width=2, stroke_fill=255)
    w, h = shape.size
    ch = round(h / mark_scale)
    cw = round(w + (ch - h) * (1.0 if pattern == "text" else 1.0))
    cell = Image.new("L", (cw, ch))
    cell.paste(shape, ((cw - w) // 2, (ch - h) // 2))
    return torch.from_numpy(np.asarray(cell, dtype=np.float32) / 255.0)


@lru_cache(maxsize=16)
def _cell(pattern: str, logo: str | None, mark_scale: float, height: int) -> torch.Tensor:
    hi = _cell_hi(pattern, logo, mark_scale)
    width = max(2, round(hi.shape[1] * height / hi.shape[0]))
    return F.interpolate(hi[None, None], size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0]


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[torch.Tensor, ...]:
    """The pixel centres (y, x) of an h x w image about its centre, and the bicubic weights (h, K) and (K, w)
    that interpolate a K x K grid of knots over it (align_corners, as F.interpolate's bicubic)."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5 - h / 2
    xs = torch.arange(w, dtype=torch.float32) + 0.5 - w / 2
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    eye = torch.eye(WARP_KNOTS).view(WARP_KNOTS, 1, WARP_KNOTS, 1)
    by = F.interpolate(eye, size=(h, 1), mode="bicubic", align_corners=True)[:, 0, :, 0].T
    bx = F.interpolate(eye, size=(w, 1), mode="bicubic", align_corners=True)[:, 0, :, 0]
    return py, px, by.contiguous(), bx.contiguous()


def render_strokes(g: Geometry, h: int, w: int, tile: float, mark_scale: float, logo: str | None = None,
                   device=None, pattern: str = "text") -> torch.Tensor:
    """(H, W) in [0, 1]: the lattice of geometry g at full resolution (sub-pixel, bilinear); tile: the cell's
    height, a fraction of the image's shorter side, before the per-image scale."""
    period = max(MIN_CELL_PX, tile * min(h, w) * g.scale)
    cell = _cell(pattern, logo, mark_scale, int(min(512, max(4, round(period)))))
    period_x = period * cell.shape[1] / cell.shape[0]
    py, px, by, bx = _grid(h, w)
    knots = torch.tensor(g.warp, dtype=torch.float32).view(2, WARP_KNOTS, WARP_KNOTS)
    disp = by @ knots @ bx * period  # the knots' bicubic interpolation, separable
    py, px = py + disp[0], px + disp[1]
    c, s = math.cos(g.rotation), math.sin(g.rotation)
    u = (c * px + s * py) / period_x + g.offset[1]
    v = (-s * px + c * py) / period + g.offset[0]
    row = torch.floor(v)
    u = u + 0.5 * torch.remainder(row, 2)  # staggered rows, as a printed watermark
    fu, fv = u - torch.floor(u), v - row
    grid = torch.stack([fu * 2 - 1, fv * 2 - 1], -1)[None]
    strokes = F.grid_sample(cell[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return strokes[0, 0].clamp(0, 1).to(device)


def mark_support(strokes: torch.Tensor, lesion: torch.Tensor, widen_px: int, coverage_max: float) -> torch.Tensor:
    """(N, H, W) bool from strokes and lesion (N, H, W): each image's strokes widened by up to widen_px, never
    on the lesion; narrowed (a thinner band, then a higher stroke threshold: small images blur the strokes)
    until the mark covers at most coverage_max of the image. ValueError when even the stroke cores of an image
    cover too much (fail closed).

    The widest band that fits, grown one pixel at a time for the whole batch: r 3x3 dilations make the
    (2r+1)-square one exactly, at 9 reads a pixel each instead of (2r+1)^2."""
    free = ~lesion
    out = torch.zeros_like(lesion)
    todo = torch.ones(len(lesion), dtype=torch.bool, device=lesion.device)
    for level in (0.05, 0.25, 0.5, 0.75, 0.9):
        idx = torch.nonzero(todo).flatten()
        grown = strokes[idx] > level
        # coverage grows with r: the first r over the bound ends that image's search at the r before it
        growing = torch.ones(len(idx), dtype=torch.bool, device=lesion.device)
        for r in range(max(0, widen_px) + 1):
            if r:
                grown = _dilate3(grown)
            band = grown & free[idx]
            growing &= band.flatten(1).float().mean(1) <= coverage_max
            if not bool(growing.any()):
                break
            out[idx[growing]] = band[growing]
            todo[idx[growing]] = False
        if not bool(todo.any()):
            return out
    cover = float(((strokes[todo] > 0.9) & free[todo]).flatten(1).float().mean(1).max())
    raise ValueError(f"the mark's strokes alone cover {cover:.3f} of the image, over {coverage_max:.3f}")


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool dilated by a 3x3 square (a 3x3 max filter, the border not extended), in two 1-D passes."""
    rows = m.clone()
    rows[:, 1:] |= m[:, :-1]
    rows[:, :-1] |= m[:, 1:]
    out = rows.clone()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out


@dataclass
class Marks:
    """One batch's patterns at full resolution."""

    strokes: torch.Tensor  # (N, 1, H, W) in [0, 1]
    support: torch.Tensor  # (N, H, W) bool
    geometry: list[Geometry]


def draw_marks(n: int, h: int, w: int, lesion: torch.Tensor, seeds: list[int], opts, budget: C.Budget,
               logo: str | None = None) -> Marks:
    """The marks of n images from their geometry seeds; opts: the spread options (options.SpreadOptions)."""
    geo = [draw_geometry(seeds[i], opts.scale_jitter, opts.warp) for i in range(n)]
    strokes = torch.stack([render_strokes(g, h, w, opts.tile, opts.mark_scale, logo, lesion.device, opts.pattern)
                           for g in geo])
    support = mark_support(strokes, lesion, round(opts.widen * min(h, w)), budget.max_area_fraction)
    return Marks((strokes * support)[:, None], support, geo)


def engine_marks(engine, n: int, h: int, w: int, lesion: torch.Tensor, contexts: list[ImageContext],
                 budget: C.Budget) -> Marks:
    """The marks an engine draws for a batch (its seed, options and logo; each image's keyed geometry): what
    `spread_watermark` paints, for a check or an evaluation that needs the mark's pixels."""
    seeds = [geometry_seed(contexts[i] if contexts else None, int(engine.profile.seed), i) for i in range(n)]
    marks = draw_marks(n, h, w, lesion.cpu(), seeds, engine.options, budget, engine.profile.logo)
    return Marks(marks.strokes.to(engine.device), marks.support.to(engine.device), marks.geometry)


def mark_layers(marks: Marks, alpha_low: torch.Tensor, texture_low: torch.Tensor, size: tuple[int, int],
                budget: C.Budget, stroke_floor: float, stroke_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mark's opacity and texture at full resolution from low-resolution maps (smooth after upsampling):
    opacity within [stroke_floor x cap on the strokes, cap], texture at least stroke_min on the strokes."""
    cap = budget.alpha_cap
    floor, bright = marks.strokes * (stroke_floor * cap), (marks.strokes > 0.5).float().mul_(stroke_min)
    if not torch.is_grad_enabled():  # the same values, the upsampled maps reused in place
        a = C.upsample(alpha_low, size).clamp_(0, cap)
        t = C.upsample(texture_low, size).clamp_(0, 1)
        return torch.maximum(a, floor, out=a), torch.maximum(t, bright, out=t)
    a = torch.maximum(C.upsample(alpha_low, size).clamp(0, cap), floor)
    t = torch.maximum(C.upsample(texture_low, size).clamp(0, 1), bright)
    return a, t


def random_mark(images: torch.Tensor, strength: str, gen: torch.Generator, lesion: torch.Tensor | None = None,
                tile_range: tuple[float, float] = (0.14, 0.3)) -> torch.Tensor:
    """A random mark of a strength level on images (N, C, H, W) in [0, 1]: what the tool's users publish, for
    training a careful third party (`miadmark.evaluation.careful_marks`). Spread levels: a random lattice (geometry,
    period) with random smooth opacity (<= the level's cap, the stroke floor kept), random smooth texture and a
    random cloak at the level's PSNR; `discreet`: the box logo at a random place, opacity and texture."""
    from .options import SpreadOptions

    n, c, h, w = images.shape
    lesion = torch.zeros(n, h, w, dtype=torch.bool, device=images.device) if lesion is None else lesion
    lv = C.level_of(strength)
    budget = C.level_budget(strength, {}, 1 / 9)
    r = torch.rand(8, generator=gen).tolist()
    if lv.design == "box":
        from ..surrogates.augment import random_logos
        return random_logos(images, gen, p=1.0)
    opts = SpreadOptions(tile=tile_range[0] + (tile_range[1] - tile_range[0]) * r[0])
    seeds = [int(s) for s in torch.randint(0, 2 ** 62, (n,), generator=gen)]
    marks = draw_marks(n, h, w, lesion.cpu(), seeds, opts, budget)
    marks = Marks(marks.strokes.to(images.device), marks.support.to(images.device), marks.geometry)
    lo = 16
    alpha = torch.rand(n, 1, lo, lo, generator=gen) * budget.alpha_cap
    texture = torch.rand(n, 1, lo, lo, generator=gen)
    a, t = mark_layers(marks, alpha.to(images.device), texture.to(images.device), (h, w), budget,
                       opts.stroke_floor, 0.5 * r[1])
    cloak = (torch.rand(n, 1, lo * 2, lo * 2, generator=gen) * 2 - 1).to(images.device)
    cmask = C.perceptual_mask(images, lesion | marks.support, budget)
    return C.compose_mark(images, lesion, marks.support, a, t, C.upsample(cloak, (h, w)), cmask, budget)


def spread_watermark(engine, images: torch.Tensor, lesion: torch.Tensor | None, contexts: list[ImageContext],
                     budget: C.Budget, strength: str) -> WatermarkBatch:
    """The iterative spread mark for `cloak` (engine: a CloakEngine, for its surrogates, lesion mask, options):
    MI-FGSM on the mark's opacity, texture and the cloak, with EOT over a third party's transforms and, in a
    share of the steps (`p_fill`), the mark filled from its surroundings (a stand-in for inpainting)."""
    from .transfer import _loss

    t0 = time.perf_counter()
    o = engine.options
    n, c, h, w = images.shape
    images = images.to(engine.device, torch.float32)
    ens = engine.ensemble
    gen = torch.Generator().manual_seed(int(engine.profile.seed))
    cap, S = budget.alpha_cap, ens.size
    kind, fw = o.loss, o.feature_weight

    def lossf(x_, avoid_, f_):
        return _loss(ens, x_, avoid_, f_, fw, kind, o.kappa)

    with torch.no_grad():
        les, les_src = engine.lesion_mask(images, lesion)
        marks = engine_marks(engine, n, h, w, les, contexts, budget)
        xs = ens.prep(images)
        avoid = engine.avoid_classes(xs)
        f_clean = [f.detach() for f in ens.outputs(xs)[1]]
        cmask = C.perceptual_mask(images, les | marks.support, budget, size=S)
        mark_low = F.adaptive_max_pool2d(marks.support[:, None].float(), (S, S))
    cu = c if ens.in_ch == 3 else 1
    hp = max(2, round(S * o.param_scale))
    alpha = torch.full((n, 1, hp, hp), cap, device=engine.device)
    texture = torch.ones(n, cu, hp, hp, device=engine.device)
    u = torch.zeros(n, cu, S, S, device=engine.device)
    use_cloak = budget.cloak_linf > 0

    def composite():
        a, t = mark_layers(marks, alpha, texture, (h, w), budget, o.stroke_floor, o.stroke_min)
        return C.compose_mark(images, les, marks.support, a, t, C.upsample(u, (h, w)) if use_cloak else None,
                              cmask, budget)

    def clamp():
        alpha.clamp_(0, cap)
        texture.clamp_(0, 1)
        u.clamp_(-1, 1)

    ascend([alpha, texture] + ([u] if use_cloak else []), [o.step_alpha, o.step_texture, o.step_cloak], clamp,
           composite, ens.prep, lambda x: lossf(x, avoid, f_clean), mark_low, gen, o,
           cloak=2 if use_cloak else None)
    with torch.no_grad():
        out = composite()
    bad = C.violations_mark(images, out, les, marks.support, budget, tol=1e-5)
    if bad:  # fail closed: an output that breaks its level's budget never leaves the engine
        raise RuntimeError(f"{engine.name} engine output breaks the {strength} budget: " + "; ".join(bad))
    secs = time.perf_counter() - t0
    cover = marks.support.flatten(1).float().mean(1).tolist()
    params_out = [{
        "engine": engine.name, "design": "spread", "strength": strength, "box": [0, 0, h, w],
        "geometry": marks.geometry[i].record(), "coverage": round(cover[i], 5), "alpha_cap": cap,
        "coverage_max": budget.max_area_fraction, "cloak_linf": budget.cloak_linf, "psnr_min": budget.psnr_min,
        "iterations": o.iterations, "lesion": les_src, "seed": int(engine.profile.seed), "surrogates": ens.names,
        "seconds": round(secs / n, 4),
    } for i in range(n)]
    return WatermarkBatch(images=out, params=params_out)
