"""`protect` with the default engine on real DICOM of the three modalities: a brain MRI slice, a chest
CR (pydicom-data RG1_UNCR.dcm, 1955x1841) and a HAM10000 dermoscopy image wrapped as a VL
photographic image (XC, RGB). Each goes to its family of surrogates, keeps the constraints, and
strips back bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.engine import DEFAULT_PROFILE, GPU_PROFILE, Profile, get_engine
from miadmark.engine.constraints import DEFAULT_STRENGTH, LEVELS
from miadmark.protect import protect, strip
from miadmark.surrogates import CHEST_SURROGATES, DEFAULT_SURROGATES, SKIN_SURROGATES, surrogates_for_modality

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"


def dermoscopy_dicom(jpg) -> Dataset:
    from PIL import Image

    rgb = np.asarray(Image.open(jpg).convert("RGB"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_PHOTOGRAPHIC, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "XC", "TEST", "Test^Derm"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return dataset_from_bytes(dataset_to_bytes(ds))


def test_family_routing():
    assert DEFAULT_PROFILE == "auto" and GPU_PROFILE == "cloak"
    assert surrogates_for_modality("MR") == DEFAULT_SURROGATES
    assert surrogates_for_modality("CT") == DEFAULT_SURROGATES  # no CT model: the brain-MRI ensemble
    assert surrogates_for_modality("PT") == DEFAULT_SURROGATES
    for names, modality, photometric in ((CHEST_SURROGATES, "CR", "MONOCHROME1"), (CHEST_SURROGATES, "DX", ""),
                                         (SKIN_SURROGATES, "XC", "RGB"), (SKIN_SURROGATES, "OT", "YBR_FULL")):
        got = surrogates_for_modality(modality, photometric)
        assert got == names or got == DEFAULT_SURROGATES  # the default only while that family's weights are absent


@pytest.mark.slow
def test_protect_three_modalities_with_the_default_engine(site_keys, shared_data):
    hospital, research = site_keys["hospital"], site_keys["research"]
    jpg = sorted((shared_data / "skin_ham10000" / "mel").glob("*.jpg"))[0]
    cases = {
        "MR": (read_dicom(get_testdata_file("MR_small.dcm")), DEFAULT_SURROGATES),
        "CR": (read_dicom(get_testdata_file("RG1_UNCR.dcm")), surrogates_for_modality("CR")),
        "XC": (dermoscopy_dicom(jpg), surrogates_for_modality("XC", "RGB")),
    }
    engine = get_engine(Profile(name=GPU_PROFILE, options={"iterations": 2, "candidates": 2}), "cpu")
    seen = []
    real = engine.watermark

    def recording(*args, **kwargs):  # the real engine; its parameters are kept for the assertions
        res = real(*args, **kwargs)
        seen.extend(res.params)
        return res

    engine.watermark = recording
    for modality, (original, names) in cases.items():
        seen.clear()
        result = protect(original, recipients=[research.cert], signer=hospital, engine=engine)
        result = dataset_from_bytes(dataset_to_bytes(result))
        assert result.PixelData != original.PixelData, modality
        assert seen and seen[0]["engine"] == "cloak" and seen[0]["surrogates"] == list(names), modality
        assert seen[0]["alpha_cap"] == LEVELS[DEFAULT_STRENGTH].alpha_cap and seen[0]["design"] == "spread"
        stripped = strip(result, keyring=[research], trust=[hospital.cert])
        assert stripped.PixelData == original.PixelData, modality
