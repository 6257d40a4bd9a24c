"""Lesion masks from a DICOM RT Structure Set (PS3.3 C.8.8), drawn on the input images.

Which ROIs are lesions: RT ROI Observations > RT ROI Interpreted Type GTV, CTV, PTV,
TREATED_VOLUME or IRRAD_VOLUME. An ROI without an interpreted type counts too (unknown
is protected), unless its name looks like the body outline or the couch (body, external,
skin, couch, table) and not like a lesion ("skin lesion" stays a lesion). Every other
type (ORGAN, EXTERNAL, AVOIDANCE, ...) is not a lesion: protecting the whole body would
leave no place for the logo.

Where: a contour goes to the images its Contour Image Sequence names; without one, to
every input image whose plane holds all its points (within half the slice spacing,
0.5 mm when unknown). Contours on images not among the inputs are skipped. Only
single-frame images are used: a multi-frame image keeps its geometry per frame in
functional groups, not read here, so contours on it are skipped. Frame of Reference
UIDs are not compared: some anonymisers rewrite them per slice, and a contour landing
on an extra image only adds protection.

How: points (mm, patient coordinates) -> (column, row) through the image's Image
Position, Image Orientation and Pixel Spacing (C.7.6.2.1.1). CLOSED_PLANAR contours are
filled and their outline drawn, so the pixels the outline crosses count too; POINT and
OPEN_* contours mark the pixels they cross (a point of a lesion ROI is lesion). The
contours of one image are OR-ed, so a hole is protected too: the safe side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset

from .errors import UnsupportedImageError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
LESION_TYPES = {"GTV", "CTV", "PTV", "TREATED_VOLUME", "IRRAD_VOLUME"}
BODY_LIKE = re.compile(r"body|external|skin|couch|table", re.IGNORECASE)
LESION_LIKE = re.compile(r"gtv|ctv|ptv|itv|tumou?r|lesion|nodul|metasta", re.IGNORECASE)
# drawn as lines / points; any other type (CLOSED_PLANAR, CLOSEDPLANAR_XOR) is filled
OPEN_KINDS = {"POINT", "OPEN_PLANAR", "OPEN_NONPLANAR"}
FALLBACK_HALF_SPACING_MM = 0.5
SHIFT = 8  # cv2 fixed-point bits: vertices keep 1/256 px precision
# a vertex this far off its image means wrong geometry (and overflows int32 at SHIFT)
FAR_PX = 1 << 20
GEOMETRY = "ImagePositionPatient / ImageOrientationPatient / PixelSpacing"


def is_rtstruct(ds: Dataset) -> bool:
    """An RT Structure Set lesion source, decided by miadmark.lesion.lesion_kind (the one place)."""
    from .lesion import RTSTRUCT, lesion_kind  # lesion imports this module
    return lesion_kind(ds) == RTSTRUCT


@dataclass(frozen=True, eq=False)
class Plane:
    """Where a single-frame image lies in patient coordinates (mm)."""

    origin: np.ndarray  # centre of the first pixel
    along_row: np.ndarray  # unit step of the column index
    along_column: np.ndarray  # unit step of the row index
    row_spacing: float  # PixelSpacing[0]: between row centres
    column_spacing: float  # PixelSpacing[1]: between column centres
    half_slice: float  # how far off the plane a contour may lie and still be on it
    shape: tuple[int, int]

    def pixels(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) mm -> (n, 2) (column, row), fractional."""
        rel = points - self.origin
        return np.stack([rel @ self.along_row / self.column_spacing,
                         rel @ self.along_column / self.row_spacing], axis=1)

    def holds(self, points: np.ndarray) -> bool:
        normal = np.cross(self.along_row, self.along_column)
        distances = (points - self.origin) @ (normal / np.linalg.norm(normal))
        return float(np.abs(distances).max()) <= self.half_slice


def plane_of(ds: Dataset) -> Plane | None:
    """The image's plane, or None when its geometry is missing or not numeric."""
    try:
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        shape = (int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        return None
    if origin.shape != (3,) or cosines.shape != (6,):
        return None
    if not (np.isfinite(origin).all() and np.isfinite(cosines).all()):
        return None
    lengths = np.linalg.norm(cosines.reshape(2, 3), axis=1)
    if min(row_spacing, column_spacing) <= 0 or lengths.min() < 0.5:
        return None
    # writers round the cosines: make them unit vectors again
    along_row, along_column = cosines[:3] / lengths[0], cosines[3:] / lengths[1]
    if np.linalg.norm(np.cross(along_row, along_column)) < 0.5:  # (nearly) parallel
        return None
    spacing = (_positive(ds.get("SpacingBetweenSlices"))
               or _positive(ds.get("SliceThickness")))
    half = spacing / 2 if spacing else FALLBACK_HALF_SPACING_MM
    return Plane(origin, along_row, along_column, row_spacing, column_spacing, half,
                 shape)


def masks_from_rtstruct(rt: Dataset, images: list[Dataset]) -> dict[str, np.ndarray]:
    """{SOP Instance UID: bool mask (Rows, Columns)} of each input image with lesion."""
    planes = {str(ds.SOPInstanceUID): plane_of(ds) for ds in images
              if "SOPInstanceUID" in ds and _single_frame(ds)}
    is_lesion = _lesion_rule(rt)
    canvases: dict[str, np.ndarray] = {}
    for roi_contour in rt.get("ROIContourSequence", []):
        roi = _roi_number(roi_contour.get("ReferencedROINumber"))
        if not is_lesion(roi):
            continue
        for contour in roi_contour.get("ContourSequence", []):
            points = _points(contour, roi)
            kind = str(contour.get("ContourGeometricType", "")).strip().upper()
            for uid in _images_of(contour, points, planes, roi):
                plane = planes[uid]
                canvas = canvases.setdefault(uid, np.zeros(plane.shape, dtype=np.uint8))
                _draw(canvas, plane.pixels(points), kind not in OPEN_KINDS, roi)
    return {uid: canvas.astype(bool) for uid, canvas in canvases.items()}


def _lesion_rule(rt: Dataset):
    names = {_roi_number(item.get("ROINumber")): str(item.get("ROIName", ""))
             for item in rt.get("StructureSetROISequence", [])}
    types: dict[int | None, set[str]] = {}
    for obs in rt.get("RTROIObservationsSequence", []):
        kind = str(obs.get("RTROIInterpretedType", "") or "").strip().upper()
        if kind:
            roi = _roi_number(obs.get("ReferencedROINumber"))
            types.setdefault(roi, set()).add(kind)

    def is_lesion(roi: int | None) -> bool:
        if roi in types:
            return bool(types[roi] & LESION_TYPES)
        name = names.get(roi, "")
        return not BODY_LIKE.search(name) or bool(LESION_LIKE.search(name))

    return is_lesion


def _images_of(contour: Dataset, points: np.ndarray, planes: dict[str, Plane | None],
               roi: int | None) -> list[str]:
    """The images a contour is on: those it names, else those whose plane holds it."""
    named = [str(item.get("ReferencedSOPInstanceUID", ""))
             for item in contour.get("ContourImageSequence", [])]
    named = [uid for uid in named if uid]
    if not named:
        return [uid for uid, plane in planes.items()
                if plane is not None and plane.holds(points)]
    present = [uid for uid in named if uid in planes]  # absent or multi-frame: skipped
    if any(planes[uid] is None for uid in present):
        raise UnsupportedImageError(
            f"RTSTRUCT ROI {roi}: the referenced image lacks a usable {GEOMETRY}")
    return present


def _points(contour: Dataset, roi: int | None) -> np.ndarray:
    try:
        raw = contour.get("ContourData")
        iterable = hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes))
        data = np.array([float(v) for v in (raw if iterable else [raw])])
    except (TypeError, ValueError):
        raise UnsupportedImageError(
            f"RTSTRUCT ROI {roi}: ContourData is missing or not numeric") from None
    if data.size == 0 or data.size % 3:
        raise UnsupportedImageError(f"RTSTRUCT ROI {roi}: ContourData has {data.size} "
                                    "values, not a whole number of (x, y, z) points")
    if not np.isfinite(data).all():
        raise UnsupportedImageError(f"RTSTRUCT ROI {roi}: ContourData is not finite")
    return data.reshape(-1, 3)


def _draw(canvas: np.ndarray, columns_rows: np.ndarray, closed: bool,
          roi: int | None) -> None:
    if np.abs(columns_rows).max() > FAR_PX:
        raise UnsupportedImageError(
            f"RTSTRUCT ROI {roi}: contour lies far outside its image (wrong geometry)")
    fixed = np.round(columns_rows * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    if closed and len(fixed) >= 3:
        cv2.fillPoly(canvas, [fixed], 1, lineType=cv2.LINE_8, shift=SHIFT)
    if len(fixed) >= 2:  # 4-connected: each pixel a step crosses, LINE_8 skips corners
        cv2.polylines(canvas, [fixed], closed, 1, lineType=cv2.LINE_4, shift=SHIFT)
    # the vertices themselves: a POINT, or a contour too short for cv2 to draw
    cols, rows = np.round(columns_rows).astype(np.int64).T
    height, width = canvas.shape
    inside = (0 <= rows) & (rows < height) & (0 <= cols) & (cols < width)
    canvas[rows[inside], cols[inside]] = 1


def _roi_number(value) -> int | None:
    if value is None or str(value).strip() == "":
        return None  # an ROI with no number has no type or name either: a lesion
    try:
        return int(str(value).strip())
    except ValueError:
        raise UnsupportedImageError(
            f"RTSTRUCT ROI number {str(value)[:16]!r} is not a number") from None


def _single_frame(ds: Dataset) -> bool:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1) == 1
    except (TypeError, ValueError):
        return False


def _positive(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if np.isfinite(number) and number > 0 else 0.0
