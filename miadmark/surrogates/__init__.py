"""Surrogate classifiers the engine optimizes against, trained here from scratch (`miadmark train`).

weights/*.pt      the engine's surrogates (white-box in the evaluation), fp16, with a .json each
weights/blackbox/ evaluation-only models (other architectures/seeds, some trained with random logos);
                  the engine never loads them.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BLACKBOX_DIR = WEIGHTS_DIR / "blackbox"
# The default ensemble for brain MRI-like grayscale images.
DEFAULT_SURROGATES = ["brain_mri_resnet10", "brain_mri_resnet10_logoaug"]


def surrogate_paths(names: list[str] | None = None) -> list[Path]:
    names = DEFAULT_SURROGATES if names is None else names
    out = []
    for n in names:
        p = Path(n)
        if not p.suffix:
            p = WEIGHTS_DIR / f"{n}.pt"
        if p.exists():
            out.append(p)
    return out
