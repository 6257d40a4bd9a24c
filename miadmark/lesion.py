"""Lesion masks from a DICOM SEG (PS3.3 C.8.20) or RTSTRUCT that references the images.

Each SEG frame names its source image (Derivation Image Sequence > Source Image
Sequence > Referenced SOP Instance UID); frames of every segment that reference the
same image are OR-ed into one mask of that image's size. An RTSTRUCT's lesion contours
are drawn on the images given with it (miadmark.rtstruct). Masks of several sources for
one image are OR-ed. True = lesion = never touched by the watermark.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from .errors import MiadmarkError, UnsupportedImageError
from .rtstruct import RTSTRUCT_SOP_CLASS, is_rtstruct, masks_from_rtstruct

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LESION_SOP_CLASSES = (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)  # what a queue row or index can tell


def is_segmentation(ds: Dataset) -> bool:
    return (str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS
            or str(ds.get("Modality", "")) == "SEG")


def is_lesion_source(ds: Dataset) -> bool:
    """A SEG or RTSTRUCT: where lesion masks come from, not an image to watermark."""
    return is_segmentation(ds) or is_rtstruct(ds)


def masks_from_seg(seg: Dataset) -> dict[str, np.ndarray]:
    """{referenced SOP Instance UID: bool mask (rows, cols)} of each image it covers."""
    from .limits import check_pixel_header
    from .pixels import decoded_array

    try:  # declared size checked first, and never a decoder that can abort the process (gdcm)
        frames = np.asarray(decoded_array(seg, check_pixel_header(seg).transfer_syntax))
    except MiadmarkError as exc:
        raise UnsupportedImageError(f"SEG pixel data does not decode ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a SEG that does not decode: no mask, loudly
        raise UnsupportedImageError(
            f"SEG pixel data does not decode ({type(exc).__name__})") from None
    frames = frames.reshape(-1, int(seg.Rows), int(seg.Columns))
    masks: dict[str, np.ndarray] = {}
    for index, group in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                mask = masks.setdefault(uid, np.zeros(frames.shape[1:], dtype=bool))
                mask |= frames[index] > 0
    return masks


def masks_from_source(ds: Dataset, images: list[Dataset]) -> dict[str, np.ndarray]:
    """Masks of one SEG or RTSTRUCT ({} for anything else); RTSTRUCTs go on `images`."""
    if is_segmentation(ds):
        return masks_from_seg(ds)
    if is_rtstruct(ds):
        return masks_from_rtstruct(ds, images)
    return {}


def merge_masks(merged: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
    """OR `masks` into `merged`, per image, in place."""
    for uid, mask in masks.items():
        if uid not in merged:
            merged[uid] = mask
        elif merged[uid].shape == mask.shape:
            merged[uid] = merged[uid] | mask
        else:
            raise UnsupportedImageError(f"lesion masks of sizes {merged[uid].shape} "
                                        f"and {mask.shape} reference the same image")


def collect_masks(datasets: list[Dataset]) -> dict[str, np.ndarray]:
    """Masks of every SEG and RTSTRUCT among `datasets` (the rest are the images)."""
    images = [ds for ds in datasets if not is_lesion_source(ds)]
    merged: dict[str, np.ndarray] = {}
    for ds in datasets:
        merge_masks(merged, masks_from_source(ds, images))
    return merged


def masks_of_sources(sources: list[Dataset], images: list[Dataset]
                     ) -> tuple[dict[str, np.ndarray], list[tuple[Dataset, str]]]:
    """Merged masks of several SEG / RTSTRUCT datasets for `images`, and each source that gave
    none with the reason: one unusable source does not cost the masks of the others."""
    merged: dict[str, np.ndarray] = {}
    unusable: list[tuple[Dataset, str]] = []
    for source in sources:
        try:
            merge_masks(merged, masks_from_source(source, images))
        except MiadmarkError as exc:
            unusable.append((source, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a malformed source must not stop the images' protection
            unusable.append((source, f"malformed ({type(exc).__name__}: {exc})"))
    return merged, unusable


def mask_for(ds: Dataset, masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """The lesion mask of one image; None when none covers it or its size differs."""
    mask = masks.get(str(ds.get("SOPInstanceUID", "")))
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if mask is None or mask.shape != (rows, cols):
        return None
    return mask
