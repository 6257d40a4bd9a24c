"""Typed engine options: one frozen options type per engine, its defaults here, unknown keys refused.

`Profile.options` is a plain dict (JSON in `--options`, the evaluation report); each engine reads it through
its type (`parse_options`), so a misspelt key (`{"iteration": 60}`) fails with the key named instead of
silently running the default. Pydantic (already the config's validator) does the typing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # every adversarial engine: which surrogates, batch size, Grad-CAM lesion, placement
    surrogates: tuple[str, ...] | None = None  # one ensemble for every image (default: by modality)
    max_batch: int = 32
    cam_threshold: float | None = None  # None: the engine's default (0-255 Grad-CAM scale)
    cam_dilate: int = 0
    candidates: int = 8  # lesion-free placements tried
    foreground: float = 0.08  # grey level above which a pixel counts as anatomy for placement


class PlainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetOptions(_Options):
    """Overrides of the strength level's budget (constraints.Budget); None: the level's value. The engine checks
    its output against the budget it used (fail closed) and records it."""

    alpha_cap: float | None = None
    coverage_max: float | None = None
    cloak_linf: float | None = None
    flat_weight: float | None = None
    background_weight: float | None = None
    background_level: float | None = None
    psnr_min: float | None = None
    psnr_margin: float | None = None
    texture_window: int | None = None

    def budget_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in BudgetOptions.model_fields if k not in _Options.model_fields
                and getattr(self, k) is not None}


class _Iterative(BaseModel):
    """MI-FGSM over the surrogates, shared by `transfer` and `cloak`."""

    iterations: int = 30
    step_alpha: float = 0.04
    step_texture: float = 0.1
    momentum: float = 1.0
    feature_weight: float = 0.5
    loss: Literal["ce", "cw", "cwm", "cem"] = "ce"
    kappa: float = 5.0
    avoid: float = 0.2
    keep_best: bool = True
    transforms: bool = True  # EOT over a third party's transforms
    param_scale: float = 0.5


class TransferOptions(_Options, _Iterative):
    step_alpha: float = 0.05
    step_texture: float = 0.12
    alpha_min: float = 0.35
    stroke_alpha_max: float | None = None  # None: profile.alpha_max + 0.15
    plate_alpha_max: float = 0.8
    stroke_min: float = 0.4
    contrast: float = 0.15
    eot: int = 1
    linf: float = 0.0
    prior: str | bool | None = None


class SpreadOptions(BaseModel):
    """The spread mark's pattern (`spread.py`): a lattice of text or of the logo, its geometry drawn per image."""

    pattern: Literal["text", "logo"] = "text"
    tile: float = 0.12  # lattice cell height, fraction of the image's shorter side (before the per-image scale)
    mark_scale: float = 0.5  # the text's (logo's) height in its cell
    scale_jitter: float = 0.15  # per-image scale in [1 - j, 1 + j]
    warp: float = 0.08  # smooth displacement, fraction of the cell height
    widen: float = 0.008  # the free-opacity band around the strokes, fraction of the shorter side
    stroke_floor: float = 1.0  # opacity on the strokes at least this fraction of the cap (the pattern reads)


class CloakOptions(BudgetOptions, _Iterative, SpreadOptions):
    alpha_min: float = 0.25  # the box logo's floor on its strokes (box design)
    stroke_min: float = 0.5
    step_cloak: float = 0.15
    p_fill: float = 0.5
    cloak_step: Literal["sign", "l2"] = "sign"
    ti_sigma: float = 0.0


class FastOptions(BudgetOptions, SpreadOptions):
    generator: str | None = None
    alpha_min: float = 0.25
    stroke_min: float = 0.5


class PaperOptions(_Options):
    population: int = 8
    generations: int = 5
    alpha_min: float = 0.3
    step_pos: float = 4.0
    step_alpha: float = 0.08
    de_f: float = 0.6
    de_cr: float = 0.7


OPTION_TYPES: dict[str, type[BaseModel]] = {
    "plain": PlainOptions, "transfer": TransferOptions, "paper": PaperOptions, "cloak": CloakOptions,
    "fast": FastOptions,
}


def parse_options(engine: str, options: dict[str, Any] | None) -> BaseModel:
    """The typed options of an engine (a profile name after `auto` is resolved). ValueError naming the key
    for an unknown key or a value of the wrong type."""
    kind = OPTION_TYPES.get(engine)
    if kind is None:
        raise ValueError(f"unknown profile {engine!r}")
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in kind.model_fields)
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                         f"profile {engine} (known: {', '.join(sorted(kind.model_fields))})")
    try:
        return kind(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"option {key!r} for profile {engine}: {err['msg']}") from None
