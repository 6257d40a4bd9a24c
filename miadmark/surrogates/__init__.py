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


# Modalities with surrogates of their own; every other modality uses DEFAULT_SURROGATES.
MODALITY_SURROGATES = {
    "CR": ["chest_xray28_resnet10_logoaug"],  # computed / digital radiography: chest X-ray model
    "DX": ["chest_xray28_resnet10_logoaug"],
}


def surrogates_for_modality(modality: str) -> list[str]:
    """The ensemble for a DICOM Modality, if its weights are here; else the default."""
    names = MODALITY_SURROGATES.get((modality or "").upper())
    return names if names and len(surrogate_paths(names)) == len(names) else DEFAULT_SURROGATES


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
