"""Lesion masks from a DICOM SEG that references the images (PS3.3 C.8.20).

Each SEG frame names its source image (Derivation Image Sequence > Source Image Sequence >
Referenced SOP Instance UID); frames of every segment that reference the same image are OR-ed
into one mask of that image's size. True = lesion = never touched by the watermark.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from .errors import UnsupportedImageError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_segmentation(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"


def masks_from_seg(seg: Dataset) -> dict[str, np.ndarray]:
    """{referenced SOP Instance UID: bool mask (rows, cols)} for every image the SEG covers."""
    try:
        frames = seg.pixel_array
    except Exception as exc:  # noqa: BLE001 - a SEG that does not decode gives no mask, loudly
        raise UnsupportedImageError(f"SEG pixel data does not decode ({type(exc).__name__})") from None
    frames = frames.reshape(-1, int(seg.Rows), int(seg.Columns))
    masks: dict[str, np.ndarray] = {}
    for index, group in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                mask = masks.setdefault(uid, np.zeros(frames.shape[1:], dtype=bool))
                mask |= frames[index] > 0
    return masks


def collect_masks(datasets: list[Dataset]) -> dict[str, np.ndarray]:
    """Masks from every SEG among `datasets`, merged per referenced image."""
    merged: dict[str, np.ndarray] = {}
    for ds in datasets:
        if is_segmentation(ds):
            for uid, mask in masks_from_seg(ds).items():
                merged[uid] = merged[uid] | mask if uid in merged else mask
    return merged


def mask_for(ds: Dataset, masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """The lesion mask of one image, or None when no SEG covers it or its size differs."""
    mask = masks.get(str(ds.get("SOPInstanceUID", "")))
    if mask is None or mask.shape != (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))):
        return None
    return mask
