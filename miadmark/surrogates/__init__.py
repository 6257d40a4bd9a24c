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


CHEST_SURROGATES = ["chest_xray224_resnet10_logoaug"]  # chest_xray_224, NORMAL / PNEUMONIA
SKIN_SURROGATES = ["skin_ham10000_resnet10_logoaug"]  # skin_ham10000, 7 dermoscopy classes, RGB
# Which family of models covers which images (the table in docs/engine.md). Radiographs (CR, DX) go to the chest
# X-ray models; colour photographs (RGB / YBR photometric, or Modality XC / DMS / GM: VL photographic,
# dermoscopy, general microscopy) to the dermoscopy models; everything else (MR, CT, PT, US, ...) to the
# brain-MRI ensemble: the nearest grayscale cross-sectional family we have, not a model of that modality.
RADIOGRAPHY = {"CR", "DX"}
PHOTOGRAPHY = {"XC", "DMS", "GM"}
# the dataset each family was trained on, and the DICOM Modality its images arrive with (evaluation)
DATASET_SURROGATES = {"brain_mri": DEFAULT_SURROGATES, "chest_xray_224": CHEST_SURROGATES,
                      "skin_ham10000": SKIN_SURROGATES}
DATASET_MODALITY = {"brain_mri": "MR", "chest_xray_224": "DX", "chest_xray28": "DX", "skin_ham10000": "XC"}


def surrogates_for_modality(modality: str, photometric: str = "") -> list[str]:
    """The ensemble for a DICOM Modality (and Photometric Interpretation), if its weights are here;
    else the brain-MRI default."""
    modality, photometric = (modality or "").upper(), (photometric or "").upper()
    if modality in RADIOGRAPHY:
        names = CHEST_SURROGATES
    elif modality in PHOTOGRAPHY or photometric.startswith(("RGB", "YBR")):
        names = SKIN_SURROGATES
    else:
        names = DEFAULT_SURROGATES
    return names if len(surrogate_paths(names)) == len(names) else DEFAULT_SURROGATES


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
