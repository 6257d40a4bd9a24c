"""Exactness on real data: protect then strip every file under ../shared/data/dicom.

strip_bytes must give back the original FILE byte for byte (preamble, file meta, group lengths,
padding, VRs as read), and strip the original dataset, element by element and pixel by pixel.
Undecodable files must be refused with a clear error.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from miadmark.dicomio import canonical_bytes, dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.errors import UnsupportedImageError
from miadmark.protect import is_protected, protect_many, strip, strip_bytes

from conftest import DICOM_DATA, UNDECODABLE, all_dicom_files, shared_params

FILES = all_dicom_files()


def _elements_equal(a: pydicom.Dataset, b: pydicom.Dataset, path: str = "") -> list[str]:
    """Tags whose values differ, recursing into sequences (group lengths excluded: writers drop them)."""
    diffs = []
    tags = {t for t in a.keys() if not (t.element == 0 and t.group > 6)} | \
           {t for t in b.keys() if not (t.element == 0 and t.group > 6)}
    for tag in sorted(tags):
        where = f"{path}{tag}"
        if tag not in a or tag not in b:
            diffs.append(where)
        elif a[tag].VR == "SQ":
            if len(a[tag].value) != len(b[tag].value):
                diffs.append(where)
            for i, (x, y) in enumerate(zip(a[tag].value, b[tag].value)):
                diffs += _elements_equal(x, y, f"{where}[{i}].")
        elif _value(a[tag]) != _value(b[tag]):
            diffs.append(where)
    return diffs


def _value(elem):
    # pydicom reads a zero-length number (DS/IS) as '' or None depending on how it was parsed
    return None if elem.value in ("", None) else elem.value


def _by_folder():
    groups: dict[str, list] = {}
    for path in FILES:
        groups.setdefault(str(path.parent.relative_to(DICOM_DATA)), []).append(path)
    return groups


LARGE_SERIES = {"ct_chest_lidc0314/data", "pet_seg_headneck/PET"}  # 96 and 299 slices: minutes on 2 cores


@pytest.mark.parametrize("folder", shared_params([pytest.param(f, marks=pytest.mark.slow) if f in LARGE_SERIES else f
                                                  for f in sorted(_by_folder())]))
def test_protect_strip_is_exact_on_every_file(folder, site_keys, shared_data):
    hospital, research = site_keys["hospital"], site_keys["research"]
    paths = _by_folder()[folder]
    originals = [read_dicom(p) for p in paths]
    results = protect_many(originals, recipients=[research.cert], signer=hospital, profile="plain")
    checked = 0
    for path, original, result in zip(paths, originals, results):
        if path.name in UNDECODABLE:
            assert isinstance(result, UnsupportedImageError), f"{path.name} must be refused"
            assert "does not decode" in str(result)
            continue
        assert not isinstance(result, Exception), f"{path.name}: {result}"
        # through bytes, as it would travel
        protected = dataset_from_bytes(dataset_to_bytes(result))
        assert is_protected(protected)
        assert protected.SOPInstanceUID != original.SOPInstanceUID
        assert protected.file_meta.MediaStorageSOPInstanceUID == protected.SOPInstanceUID
        assert protected.ImageType[0] == "DERIVED"
        assert protected.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        if "SEG" not in path.name:  # a binary SEG frame can legitimately be left unchanged by the blend
            assert not np.array_equal(protected.pixel_array, original.pixel_array), f"{path.name}: no watermark"

        assert strip_bytes(protected, keyring=[research], trust=[hospital.cert]) == path.read_bytes(), path.name
        stripped = strip(protected, keyring=[research], trust=[hospital.cert])
        assert _elements_equal(original, stripped) == [], path.name
        assert stripped.file_meta == original.file_meta, path.name
        assert canonical_bytes(stripped) == canonical_bytes(original), path.name
        assert np.array_equal(stripped.pixel_array, original.pixel_array), path.name
        if not original.file_meta.TransferSyntaxUID.is_compressed:
            raw = path.read_bytes()
            pydicom_written = canonical_bytes(read_dicom(io.BytesIO(raw)))
            assert canonical_bytes(stripped)[128:] == pydicom_written[128:], path.name
        checked += 1
    assert checked > 0
