"""Exactness on layouts the shared data lacks, from the pydicom-data package (offline, PyPI):
big endian, native YBR_FULL, 1-bit, modality LUT / VOI LUT sequences, MONOCHROME1, palette,
signed, 32-bit, multi-frame, overlays in the high bits."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from miadmark.dicomio import canonical_bytes, dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.protect import protect_many, strip

NAMES = [
    "MR_small_bigendian.dcm",         # explicit big endian, signed 16-bit
    "OBXXXX1A_expb_2frame.dcm",       # big endian palette colour, 2 frames
    "SC_rgb_expb_32bit.dcm",          # big endian RGB 32-bit
    "SC_ybr_full_uncompressed.dcm",   # native YBR_FULL
    "liver.dcm",                      # 1-bit allocated, 3 frames
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # 12 of 16 bits stored
    "mlut_18.dcm",                    # modality LUT sequence, signed
    "vlut_04.dcm",                    # VOI LUT sequence
    "RG1_UNCR.dcm",                   # MONOCHROME1, 15 of 16 bits
    "US1_UNCR.dcm",                   # RGB ultrasound
    "eCT_Supplemental.dcm",           # enhanced CT, 2 frames, functional groups
    "emri_small_big_endian.dcm",      # big endian multi-frame
    "gdcm-US-ALOKA-16.dcm",           # 16-bit US with segmented palette
]


@pytest.mark.slow
def test_protect_strip_exact_on_pydicom_data(site_keys):
    hospital, research = site_keys["hospital"], site_keys["research"]
    originals = [read_dicom(get_testdata_file(name)) for name in NAMES]
    results = protect_many(originals, recipients=[research.cert], signer=hospital, profile="plain")
    for name, original, result in zip(NAMES, originals, results):
        assert not isinstance(result, Exception), f"{name}: {result}"
        protected = dataset_from_bytes(dataset_to_bytes(result))
        assert protected.PixelData != original.PixelData, name
        stripped = strip(protected, keyring=[research], trust=[hospital.cert])
        assert canonical_bytes(stripped) == canonical_bytes(original), name
        assert stripped.PixelData == original.PixelData, name
        assert stripped.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name


@pytest.mark.parametrize("name", ["MR-SIEMENS-DICOM-WithOverlays.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm"])
def test_residual_is_zero_outside_the_watermark(name, site_keys):
    """Only the watermarked pixels change: the record holds a residual, not a copy."""
    hospital, research = site_keys["hospital"], site_keys["research"]
    original = read_dicom(get_testdata_file(name))
    protected = protect_many([original], recipients=[research.cert], signer=hospital, profile="plain")[0]
    before, after = original.pixel_array, protected.pixel_array
    changed = before != after
    if changed.ndim == 3:
        changed = changed.any(-1)
    ys, xs = np.nonzero(changed)
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 0 < box_area <= changed.size / 9 + (changed.shape[0] + changed.shape[1]) * 2
