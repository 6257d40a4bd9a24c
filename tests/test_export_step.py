"""The one export step (miadmark.export) on real data: what each instance becomes on its way out.

A CT slice whose Modality says SEG is protected like any image; a real SEG is forwarded unchanged on a
plain route and de-identified with its images' keyed mapping on a de-identifying one; a SEG-class object
whose content is an image is refused; a slice with a corrupted SOP Class UID VR fails alone, named;
refusals are classified (transient / permanent) and never quote a value.
"""

from __future__ import annotations

import copy
import errno

import pydicom
import pytest
from bad_inputs import CT, bad_vr_sop_class
from conftest import DICOM_DATA

from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.errors import InvalidInputError
from miadmark.export import (FORWARDED_DEIDENTIFIED, FORWARDED_UNCHANGED, Forwarded, Protected, Refused,
                             export_many, export_one, refusal)
from miadmark.lesion import SEG_SOP_CLASS, LesionSourceError, StudyLesions, is_lesion_source, lesion_kind
from miadmark.protect import is_protected
from miadmark.rules import BLOCK, PASS, PROTECT, Decision

SEG = DICOM_DATA / "pet_seg_headneck" / "SEG_tumor_User1_Manual_Trial1.dcm"
PET = sorted((DICOM_DATA / "pet_seg_headneck" / "PET").glob("*.dcm"))
IDENTITY = ("PatientName", "PatientID")


@pytest.fixture(scope="module")
def route(site_keys):
    recipients = (site_keys["research_paths"][1],)
    plain = Decision(PROTECT, 0, ("research",), recipients=recipients, profile="plain", reason="rule 1")
    deid = Decision(PROTECT, 0, ("research",), recipients=recipients, profile="plain", reason="rule 1",
                    deidentify="basic")
    return {"plain": plain, "deid": deid, "signer": site_keys["hospital"]}


def export(instances, decision, route, **kw):
    return export_many(instances, decision, destination="research", signer=route["signer"], device="cpu", **kw)


def test_modality_seg_on_a_ct_image_is_protected_not_forwarded(route):
    ct = read_dicom(CT[0])
    ct.Modality = "SEG"  # the SOP class still says CT Image Storage
    assert not is_lesion_source(ct)
    out = export([ct], route["plain"], route)[0]
    assert isinstance(out, Protected), out
    assert is_protected(out.dataset) and out.dataset.PixelData != ct.PixelData


def test_real_seg_goes_unchanged_on_a_plain_route(route):
    seg = read_dicom(SEG)
    out = export([seg], route["plain"], route)[0]
    assert isinstance(out, Forwarded) and out.lesion_source and out.unchanged
    assert out.note == FORWARDED_UNCHANGED
    assert dataset_to_bytes(out.dataset) == dataset_to_bytes(seg)


def test_real_seg_on_a_deidentifying_route_points_at_the_deidentified_images(route):
    seg = read_dicom(SEG)
    referenced = {str(src.ReferencedSOPInstanceUID) for group in seg.PerFrameFunctionalGroupsSequence
                  for der in group.DerivationImageSequence for src in der.SourceImageSequence}
    pet = next(ds for ds in map(read_dicom, PET) if str(ds.SOPInstanceUID) in referenced)
    lesions = StudyLesions([seg])
    seg_out, pet_out = export([seg, pet], route["deid"], route, lesions=lesions)
    assert isinstance(seg_out, Forwarded) and seg_out.deidentified and seg_out.note == FORWARDED_DEIDENTIFIED
    assert isinstance(pet_out, Protected) and pet_out.deidentified and pet_out.lesion_masked
    data = dataset_to_bytes(seg_out.dataset)
    for keyword in IDENTITY:
        assert str(seg.get(keyword)).encode() not in data
    # the SEG's Study Instance UID is the one the protected image carries (same keyed mapping)
    assert seg_out.dataset.StudyInstanceUID == pet_out.dataset.StudyInstanceUID != seg.StudyInstanceUID


def test_seg_class_with_image_content_is_refused(route):
    ct = read_dicom(CT[0])
    ct.SOPClassUID = SEG_SOP_CLASS  # the class says SEG; nothing else does
    with pytest.raises(LesionSourceError):
        lesion_kind(ct)
    out = export([ct], route["plain"], route)[0]
    assert isinstance(out, Refused) and out.permanent and "Segment Sequence" in out.reason


def test_corrupted_sop_class_vr_fails_alone_named(route, tmp_path):
    bad = bad_vr_sop_class(tmp_path / "bad.dcm")
    head = pydicom.dcmread(bad, stop_before_pixels=True)
    with pytest.raises(InvalidInputError, match=r"SOPClassUID \(0008,0016\)"):
        lesion_kind(head)  # the header alone: as the CLI and the adapters read it first
    good = read_dicom(CT[1])
    outs = export([bad.read_bytes(), good], route["plain"], route)
    assert isinstance(outs[0], Refused) and outs[0].permanent
    assert "SOPClassUID (0008,0016)" in outs[0].reason
    assert isinstance(outs[1], Protected)


def test_pass_and_block(route):
    ct = read_dicom(CT[0])
    passed = export_one(ct, Decision(PASS, 0, ("research",), reason="rule 1"), destination="research",
                        signer=route["signer"])
    assert isinstance(passed, Forwarded) and passed.dataset is ct and not passed.lesion_source
    blocked = export_one(ct, Decision(BLOCK, None, ("research",), reason="no rule matches"), destination="research",
                         signer=route["signer"])
    assert isinstance(blocked, Refused) and blocked.blocked and blocked.permanent
    assert blocked.source_uid == str(ct.SOPInstanceUID)


def test_refusals_are_classified_and_value_free(route):
    full = refusal("cannot write", OSError(errno.ENOSPC, "No space left on device"))
    assert full.transient
    leaky = refusal("protect refused", ValueError("invalid value 'DOE^JOHN'"))
    assert leaky.permanent and "DOE" not in leaky.reason and "ValueError" in leaky.reason
    garbage = export([b"not dicom at all"], route["plain"], route)[0]
    assert isinstance(garbage, Refused) and garbage.permanent


def test_without_a_signer_nothing_is_protected(route):
    outs = export_many([read_dicom(CT[0])], route["plain"], destination="research", signer=None, device="cpu")
    assert isinstance(outs[0], Refused) and "no identity" in outs[0].reason


def test_a_deidentified_lesion_source_is_not_the_identified_one(route):
    seg = read_dicom(SEG)
    before = copy.deepcopy(seg)
    out = export([seg], route["deid"], route)[0]
    assert out.dataset is not seg and dataset_to_bytes(seg) == dataset_to_bytes(before)  # input untouched
