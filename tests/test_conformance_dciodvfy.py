"""Conformance: every object we write validates as well as its original, by an independent validator.

dciodvfy (dicom3tools, Debian package `dicom3tools`) checks each object against its IOD. The
protected, the stripped and the de-identified version of every decodable file in ../shared/data/dicom
(the large series sampled), the chest CR of pydicom-data and the de-identified SEG must report no
error that their original does not: compared message by message (values normalised), not by count.
Profiles: `plain` on every file, `fast` (the default on CPU) on one file per folder, with
de-identification and shifted dates.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pydicom.data
import pytest

from miadmark.deid import Deidentifier
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.protect import protect_many, strip_bytes
from miadmark.uids import UidMaker

from conftest import DICOM_DATA, UNDECODABLE

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                reason="no dciodvfy: run .ci/install-ops.sh (Debian package dicom3tools)")

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))
PET = sorted((DICOM_DATA / "pet_seg_headneck" / "PET").glob("*.dcm"))
SEG = DICOM_DATA / "pet_seg_headneck" / "SEG_tumor_User1_Manual_Trial1.dcm"
RGB = DICOM_DATA / "transfer_syntaxes" / "JPEGBaseline" / "SC_rgb_jpeg_lossy_gdcm.dcm"
CR = Path(pydicom.data.get_testdata_file("RG1_UNCR.dcm"))  # 1955x1841 16-bit chest CR


def _sample(series: list[Path]) -> list[Path]:
    return [series[0], series[len(series) // 2], series[-1]]  # first, middle, last slice


def _folders() -> dict[str, list[Path]]:
    """Every decodable file by folder; the 96-slice CT and the 299-slice PET sampled to 3 slices each."""
    folders: dict[str, list[Path]] = {"pydicom-data/CR": [CR]}
    for path in sorted(DICOM_DATA.rglob("*.dcm")):
        if path.name not in UNDECODABLE and path != SEG and path.parent not in (CT[0].parent, PET[0].parent):
            folders.setdefault(str(path.parent.relative_to(DICOM_DATA)), []).append(path)
    folders["ct_chest_lidc0314/data"] = _sample(CT)
    folders["pet_seg_headneck/PET"] = _sample(PET)
    return folders


FOLDERS = _folders()
VALUE = re.compile(r"= <[^>]*>")  # the offending value: a shifted date or a new UID is the same error


def validator_errors(data: bytes, folder: Path) -> set[str] | None:
    """dciodvfy's errors on one object, values normalised; None when dciodvfy aborts (it asserts on
    some pixel data, e.g. 32-bit words)."""
    path = folder / "object.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, errors="replace",
                         timeout=120)
    if run.returncode not in (0, 1):
        return None
    return {VALUE.sub("= <value>", line.strip()) for line in run.stderr.splitlines() if line.startswith("Error")}


def _header_only(data: bytes) -> bytes:
    ds = dataset_from_bytes(data)
    if "PixelData" in ds:
        del ds.PixelData
    return dataset_to_bytes(ds)


def new_errors(original: bytes, derived: bytes, folder: Path, same_pixels: bool = False) -> list[str]:
    """Errors of derived that original has not. Where dciodvfy aborts on either, both headers compare.

    same_pixels: derived carries the original's Pixel Data element as read (de-identified only); a
    malformed one (an odd-length JPEG 2000 fragment) reads back differently once written again, an
    error of the original's, so the original as written again counts as the original too.
    """
    before, after = validator_errors(original, folder), validator_errors(derived, folder)
    if before is None or after is None:
        original, derived = _header_only(original), _header_only(derived)
        before, after = validator_errors(original, folder), validator_errors(derived, folder)
        assert before is not None and after is not None, "dciodvfy aborts on the header alone"
    if same_pixels:
        try:
            rewritten = dataset_to_bytes(dataset_from_bytes(original))
        except (AttributeError, ValueError):  # an original pydicom cannot write (no Media Storage SOP Instance UID)
            rewritten = None
        before |= rewritten and validator_errors(rewritten, folder) or set()
    return sorted(after - before)


def _maker() -> UidMaker:
    return UidMaker(b"site secret for the test, 32 b.", "destination:research")


@pytest.mark.parametrize("dates", ["remove", "shift"])
@pytest.mark.parametrize("path", [CT[0], CR, RGB, PET[0], SEG], ids=["CT", "CR", "RGB", "PET", "SEG"])
def test_deidentified_object_adds_no_error(path: Path, dates: str, tmp_path: Path):
    original = path.read_bytes()
    deidentified = dataset_to_bytes(Deidentifier("basic", _maker(), dates=dates).apply(read_dicom(path)))
    assert new_errors(original, deidentified, tmp_path, same_pixels=True) == [], path.name


def test_the_comparison_sees_an_error_the_original_did_not_have(tmp_path: Path):
    """The check itself: a date the validator refuses (the year 0001 dummy) is a new error."""
    ds = read_dicom(CT[0])
    ds.StudyDate = "00010101"
    assert any("StudyDate" in e for e in new_errors(CT[0].read_bytes(), dataset_to_bytes(ds), tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_protected_stripped_and_deidentified_add_no_error(folder: str, site_keys, tmp_path: Path):
    hospital, research = site_keys["hospital"], site_keys["research"]
    paths = FOLDERS[folder]
    originals = [read_dicom(p) for p in paths]
    deid = Deidentifier("basic", _maker())
    plain = protect_many(originals, recipients=[research.cert], signer=hospital, profile="plain")
    # the default profile, de-identified with shifted dates; strip restores the identified original
    fast = protect_many(originals[:1], recipients=[research.cert], signer=hospital, profile="fast",
                        destination="research", deidentify="basic", deidentify_dates="shift", restore_identity=True)
    found = {}
    for path, original, protected, fast_protected in zip(paths, originals, plain, fast + [None] * len(paths)):
        data = path.read_bytes()
        assert not isinstance(protected, Exception), f"{path.name}: {protected}"
        derived = {"protected plain": protected, "de-identified": deid.apply(original)}
        if fast_protected is not None:
            assert not isinstance(fast_protected, Exception), f"{path.name}: {fast_protected}"
            derived["protected fast, de-identified, dates shifted"] = fast_protected
        for name, ds in derived.items():
            found[f"{path.name} {name}"] = new_errors(data, dataset_to_bytes(ds), tmp_path,
                                                      same_pixels=name == "de-identified")
        for name, ds in (("plain", protected), ("fast", fast_protected)):
            if ds is not None:
                stripped = strip_bytes(ds, keyring=[research], trust=[hospital.cert])
                assert stripped == data, f"{path.name}: strip of {name} is not the original"
                found[f"{path.name} stripped {name}"] = new_errors(data, stripped, tmp_path)
    assert {name: errors for name, errors in found.items() if errors} == {}


def test_the_protected_image_type_is_derived_and_valid():
    """Image Type Value 1 DERIVED with the VM Image Type needs; ORIGINAL-only attributes leave an enhanced
    MR (dciodvfy: "present when condition unsatisfied") and stay on a classic MR (Type 2 there)."""
    from pydicom.dataset import Dataset

    from miadmark.derived import ORIGINAL_ONLY, mark_derived

    one = Dataset()
    one.ImageType = "DERIVED"  # one value, as the NM test file has it: was split into letters
    out = Dataset()
    mark_derived(out, one)
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]
    for sop_class, kept in (("1.2.840.10008.5.1.4.1.1.4.1", False), ("1.2.840.10008.5.1.4.1.1.4", True)):
        mr = Dataset()
        mr.SOPClassUID, mr.ImageType = sop_class, ["ORIGINAL", "PRIMARY", "M", "NONE"]
        mr.MRAcquisitionType, mr.EchoPulseSequence, mr.BulkMotionCompensationTechnique = "3D", "SPIN", "NONE"
        out = copy.deepcopy(mr)
        mark_derived(out, mr)
        assert list(out.ImageType) == ["DERIVED", "PRIMARY", "M", "NONE"]
        assert ("MRAcquisitionType" in out) == kept and ("EchoPulseSequence" in out) == kept
        assert "MRAcquisitionType" in ORIGINAL_ONLY
