"""An RTSTRUCT on real CT slices gives the lesion mask: GTV protected, BODY not."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from miadmark.cli import main
from miadmark.dicomio import read_dicom
from miadmark.engine import Profile
from miadmark.errors import UnsupportedImageError
from miadmark.lesion import collect_masks
from miadmark.rtstruct import RTSTRUCT_SOP_CLASS, is_rtstruct, masks_from_rtstruct

from conftest import DICOM_DATA

FOLDER = DICOM_DATA / "ct_chest_lidc0314" / "data"
# two slices 1 mm apart carry the GTV; the third, 9 mm away, must get no mask
SLICES = ["000159.dcm", "000183.dcm", "000090.dcm"]
RADIUS_MM = 20.0
CLOSED = "CLOSED_PLANAR"


@pytest.fixture(scope="module")
def ct():
    return [read_dicom(FOLDER / name) for name in SLICES]


def _z(ds) -> float:
    return float(ds.ImagePositionPatient[2])


def _centre(ds) -> tuple[float, float]:
    """Patient x, y (mm) of pixel (column 256, row 288): soft tissue in these slices."""
    x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
    return x0 + 256 * float(ds.PixelSpacing[1]), y0 + 288 * float(ds.PixelSpacing[0])


def _circle(ds, n: int = 64) -> np.ndarray:
    cx, cy = _centre(ds)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = cx + RADIUS_MM * np.cos(t), cy + RADIUS_MM * np.sin(t)
    return np.stack([x, y, np.full(n, _z(ds))], axis=1)


def _square(ds, margin_mm: float = 5.0) -> np.ndarray:
    """A square beyond the whole slice: a BODY outline at its largest."""
    x, y = (float(v) - margin_mm for v in ds.ImagePositionPatient[:2])
    side = int(ds.Columns) * float(ds.PixelSpacing[1]) + 2 * margin_mm
    corners = [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    return np.array([[cx, cy, _z(ds)] for cx, cy in corners])


def _image_ref(ds, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, uid
    return item


def make_rtstruct(images, rois) -> Dataset:
    """A complete RT Structure Set. rois: (number, name, interpreted type, contours);
    a contour: (points (n, 3) mm, referenced SOP Instance UID or None, geometry)."""
    ref = images[0]
    rt = Dataset()
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    rt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt.SOPClassUID = RTSTRUCT_SOP_CLASS
    rt.SOPInstanceUID = rt.file_meta.MediaStorageSOPInstanceUID
    rt.Modality = "RTSTRUCT"
    rt.PatientID, rt.StudyInstanceUID = ref.PatientID, ref.StudyInstanceUID
    rt.SeriesInstanceUID = generate_uid()
    rt.StructureSetLabel = "TEST"
    rt.StructureSetDate, rt.StructureSetTime = "20240101", "120000"

    series = Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(ref, ds.SOPInstanceUID) for ds in images]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # as vendors write it
    study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    rt.ReferencedFrameOfReferenceSequence = [frame]

    rt.StructureSetROISequence = Sequence()
    rt.ROIContourSequence = Sequence()
    rt.RTROIObservationsSequence = Sequence()
    for number, name, kind, contours in rois:
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "MANUAL"
        roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        rt.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = Sequence()
        for points, uid, geometric in contours:
            contour = Dataset()
            contour.ContourGeometricType = geometric
            contour.ContourData = [round(float(v), 3) for v in np.ravel(points)]
            contour.NumberOfContourPoints = len(contour.ContourData) // 3
            if uid:
                contour.ContourImageSequence = [_image_ref(ref, uid)]
            roi_contour.ContourSequence.append(contour)
        rt.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType, observation.ROIInterpreter = kind, ""
        rt.RTROIObservationsSequence.append(observation)
    return rt


def gtv_rtstruct(ct) -> Dataset:
    first, second, third = ct
    gtv = [(_circle(first), first.SOPInstanceUID, CLOSED),
           (_circle(second), None, CLOSED),  # no reference: found by its plane
           (_circle(third), generate_uid(), CLOSED)]  # on an image not given: skipped
    body = [(_square(ds), ds.SOPInstanceUID, CLOSED) for ds in ct]
    skin = [(_square(third), None, CLOSED)]  # untyped, but named like the body
    return make_rtstruct(ct, [(1, "GTV lesion", "GTV", gtv),
                              (2, "BODY", "EXTERNAL", body), (3, "Skin", "", skin)])


def within(ds, radius_mm: float) -> np.ndarray:
    """Pixels whose centre is within radius_mm of the GTV centre, from the geometry."""
    rows, cols = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
    x = float(ds.ImagePositionPatient[0]) + cols * float(ds.PixelSpacing[1])
    y = float(ds.ImagePositionPatient[1]) + rows * float(ds.PixelSpacing[0])
    cx, cy = _centre(ds)
    return np.hypot(x - cx, y - cy) <= radius_mm


def test_gtv_mask_matches_the_circle_and_body_is_ignored(ct):
    rt = gtv_rtstruct(ct)
    assert is_rtstruct(rt)
    masks = collect_masks([rt, *ct])
    first, second, _ = ct
    # BODY, Skin and the contour on an absent image give nothing: third slice is free
    assert set(masks) == {str(first.SOPInstanceUID), str(second.SOPInstanceUID)}
    for ds in (first, second):
        mask, px = masks[str(ds.SOPInstanceUID)], float(ds.PixelSpacing[0])
        assert mask.shape == (512, 512) and mask.dtype == bool
        assert mask[within(ds, RADIUS_MM - 1 * px)].all()  # all of the lesion
        assert not mask[~within(ds, RADIUS_MM + 1.5 * px)].any()  # nothing beyond it
        disk_px = np.pi * (RADIUS_MM / px) ** 2
        assert disk_px < mask.sum() < disk_px * 1.15


@pytest.mark.parametrize("damage, reason", [("odd", "ContourData has 193 values"),
                                            ("no spacing", "lacks a usable")])
def test_bad_rtstruct_is_refused_naming_the_roi_and_reason(ct, damage, reason):
    images = [copy.deepcopy(ds) for ds in ct]
    points = _circle(images[0]).ravel().tolist()
    if damage == "odd":
        points.append(1.0)
    else:
        del images[0].PixelSpacing
    gtv = [(points, images[0].SOPInstanceUID, CLOSED)]
    rt = make_rtstruct(images, [(7, "GTV", "GTV", gtv)])
    with pytest.raises(UnsupportedImageError) as info:
        masks_from_rtstruct(rt, images)
    assert "ROI 7" in str(info.value) and reason in str(info.value)
    assert str(images[0].PatientID) not in str(info.value)


def test_pixel_spacing_is_row_spacing_then_column_spacing(ct):
    """PS3.3 C.7.6.2.1.1: the column index steps PixelSpacing[1] along the row axis."""
    head = copy.deepcopy(ct[0])
    head.PixelSpacing = [0.5, 1.0]  # rows 0.5 mm apart, columns 1.0 mm apart
    x0, y0, z = (float(v) for v in head.ImagePositionPatient)
    point = [x0 + 100 * 1.0, y0 + 40 * 0.5, z]  # column 100, row 40
    gtv = [([point], head.SOPInstanceUID, "POINT")]
    rt = make_rtstruct([head], [(1, "GTV", "GTV", gtv)])
    mask = masks_from_rtstruct(rt, [head])[str(head.SOPInstanceUID)]
    assert list(zip(*np.nonzero(mask))) == [(40, 100)]


def test_vendor_rtstruct_without_its_images_gives_no_mask(ct):
    # a real vendor file (no preamble, hence force): EXTERNAL and ISOCENTER ROIs only
    vendor = dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    assert is_rtstruct(vendor)
    assert masks_from_rtstruct(vendor, []) == {}
    assert collect_masks([vendor, *ct]) == {}


def test_protect_cli_keeps_gtv_pixels_and_writes_no_rtstruct(ct, site_keys, tmp_path,
                                                              monkeypatch, capsys):
    rt = gtv_rtstruct(ct)
    rt_path = tmp_path / "rtstruct.dcm"
    rt.save_as(rt_path, enforce_file_format=True)
    masks = collect_masks([rt, *ct])
    # a plain logo that would cover the whole image: only the lesion can stop it
    whole_image = functools.partial(Profile, max_area_fraction=1.0)
    monkeypatch.setattr("miadmark.commands.protect.Profile", whole_image)
    key, cert = site_keys["hospital_paths"]
    out = tmp_path / "out"
    inputs = [str(FOLDER / name) for name in SLICES] + [str(rt_path)]
    rc = main(["protect", *inputs, "--out", str(out), "--profile", "plain",
               "--recipient", str(site_keys["research_paths"][1]),
               "--sign-key", str(key), "--sign-cert", str(cert), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err.strip() == "", captured.err
    assert captured.out.strip().splitlines()[-1] == "3 protected, 0 failed"
    assert sorted(p.name for p in out.iterdir()) == sorted(SLICES)  # no RTSTRUCT
    for name, ds in zip(SLICES, ct):
        changed = ds.pixel_array != read_dicom(out / name).pixel_array
        assert changed.sum() > 0.05 * changed.size  # the logo is there
        lesion = masks.get(str(ds.SOPInstanceUID))
        if lesion is not None:
            assert not changed[lesion].any()  # zero GTV pixels changed
            assert changed[within(ds, 2 * RADIUS_MM) & ~lesion].any()  # right up to it
