"""Lesion sources: what counts as one (decided here only), and the masks they give.

A lesion source is an object whose SOP Class is Segmentation Storage (PS3.3 C.8.20) or RT Structure
Set Storage (C.8.8), and whose content is one: a SEG carries a Segment Sequence and 1- or 8-bit
segments, an RTSTRUCT carries no Pixel Data. A lesion source is never watermarked, so a header value
must not make an image one: Modality (SEG, RTSTRUCT) is not looked at, and an object of a lesion
source class whose content is an image is refused (LesionSourceError), never forwarded unprotected.
The SOP Class UID is read as guardedly as the pixel path: an element that does not decode fails that
object alone, with the element named.

Masks: each SEG frame names its source image (Derivation Image Sequence > Source Image
Sequence > Referenced SOP Instance UID); frames of every segment that reference the
same image are OR-ed into one mask of that image's size. An RTSTRUCT's lesion contours
are drawn on the images given with it (miadmark.rtstruct). Masks of several sources for
one image are OR-ed. True = lesion = never touched by the watermark.
"""

from __future__ import annotations

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from .errors import InvalidInputError, MiadmarkError, UnsupportedImageError
from .limits import element_name
from .rtstruct import RTSTRUCT_SOP_CLASS, masks_from_rtstruct

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LESION_SOP_CLASSES = (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)  # what a queue row or index can tell
SEG, RTSTRUCT = "SEG", "RTSTRUCT"
SEG_BITS = (1, 8)  # PS3.3 C.8.20.2: BINARY segments are 1 bit, FRACTIONAL 8
# what lesion_kind and RTSTRUCT contour placement need of a header read without pixels
HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
               "SegmentSequence", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
               "SliceThickness", "SpacingBetweenSlices"]


class LesionSourceError(InvalidInputError):
    """An object of a lesion source's SOP class whose content is not one: neither forwarded nor watermarked."""


def guarded_value(ds: Dataset, keyword: str, default=None):
    """An element's value, or InvalidInputError naming the element when it does not decode (a corrupted
    VR or length): one bad header fails its object alone, and its value is never quoted."""
    try:
        return ds[keyword].value if keyword in ds else default
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, this element is malformed
        raise InvalidInputError(f"element {element_name(tag_for_keyword(keyword))} cannot be read "
                                f"({type(exc).__name__})") from None


def sop_class_of(ds: Dataset) -> str:
    """The SOP Class UID ('' when absent); InvalidInputError when it does not decode or is not one UID."""
    value = guarded_value(ds, "SOPClassUID", "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"element {element_name(0x00080016)} is not one UID")
    return value.strip().rstrip("\0")


def lesion_kind(ds: Dataset) -> str | None:
    """SEG or RTSTRUCT for a lesion source, None for anything else (an image to protect).
    Raises InvalidInputError when the SOP Class UID does not read, LesionSourceError when the
    object's class is a lesion source's and its content is not."""
    sop_class = sop_class_of(ds)
    if sop_class == SEG_SOP_CLASS:
        if guarded_value(ds, "SegmentSequence") is None:
            raise LesionSourceError("Segmentation Storage object without a Segment Sequence: not a segmentation")
        bits = guarded_value(ds, "BitsAllocated")
        if bits is not None and bits not in SEG_BITS:
            raise LesionSourceError("Segmentation Storage object whose Bits Allocated is not 1 or 8: "
                                    "not a segmentation")
        return SEG
    if sop_class == RTSTRUCT_SOP_CLASS:
        if "PixelData" in ds:
            raise LesionSourceError("RT Structure Set Storage object with Pixel Data: not a structure set")
        return RTSTRUCT
    return None


def is_lesion_source(ds: Dataset) -> bool:
    """A SEG or RTSTRUCT (lesion_kind): where lesion masks come from, not an image to watermark."""
    return lesion_kind(ds) is not None


def is_segmentation(ds: Dataset) -> bool:
    return lesion_kind(ds) == SEG


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
    kind = lesion_kind(ds)
    if kind == SEG:
        return masks_from_seg(ds)
    if kind == RTSTRUCT:
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


class StudyLesions:
    """The lesion sources of the studies being exported, and the masks they give their images.

    unusable: (source SOP Instance UID, reason) of each source that gave no mask, once each (its
    lesions may be under the watermark: the caller says so in its audit trail)."""

    def __init__(self, sources: list[Dataset] | tuple = (), unusable: list[tuple[str, str]] | tuple = ()):
        self.sources = list(sources)
        self.unusable: list[tuple[str, str]] = list(unusable)

    def masks_for(self, images: list[Dataset]) -> list[np.ndarray | None]:
        """One mask (or None) per image; RTSTRUCT contours are placed on `images`."""
        if not self.sources:
            return [None] * len(images)
        merged, unusable = masks_of_sources(self.sources, images)
        seen = {uid for uid, _ in self.unusable}
        for source, reason in unusable:
            uid = str(source.get("SOPInstanceUID", ""))
            if uid not in seen:
                seen.add(uid)
                self.unusable.append((uid, reason))
        return [mask_for(ds, merged) for ds in images]
