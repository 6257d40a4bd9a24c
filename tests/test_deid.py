"""De-identification (PS3.15 Basic Profile) before protection, on real CT, PET and MR: what the profile's
table removes is gone at every level, UIDs are remapped consistently, strip gives back the
de-identified object or the identified original exactly as configured, burned-in text is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from miadmark.config import parse_config
from miadmark.deid import Deidentifier, profile_rules
from miadmark.dicomio import dataset_from_bytes as read_dicom_bytes
from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.errors import BurnedInAnnotationError
from miadmark.protect import open_record, protect, protect_many, strip_bytes
from miadmark.record import decrypt
from miadmark.rules import decide
from miadmark.uids import UidMaker, scope_of, site_secret

from conftest import DICOM_DATA, shared_params

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:2]  # two slices of one series
PET = sorted((DICOM_DATA / "pet_seg_headneck" / "PET").glob("*.dcm"))[:1]
MR = sorted((DICOM_DATA / "enhanced_mr").rglob("*.dcm"))[:2]  # Philips and Siemens enhanced MR
REAL = CT + PET + MR
# identifying attributes every Basic Profile implementation must not pass on (PS3.15 Table E.1-1)
MUST_CHANGE = ["PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
               "ReferringPhysicianName", "AccessionNumber", "StudyID", "OperatorsName", "PerformingPhysicianName",
               "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyDate",
               "SeriesDate", "AcquisitionDate", "ContentDate", "StationName", "DeviceSerialNumber"]
REMOVED_OR_DUMMY = ("", None, [], "19000101", "19000101000000", "000000", "0", 0, b"", "ANONYMIZED")


def _maker(scope: str = "destination:research") -> UidMaker:
    return UidMaker(b"site secret for the test, 32 b.", scope)


def _all_elements(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _all_elements(item)


@pytest.mark.parametrize("path", shared_params(REAL), ids=lambda p: p.parent.name + "/" + p.name)
def test_the_profile_table_is_applied_at_every_level(path: Path, shared_data):
    original = read_dicom(path)
    out = Deidentifier("basic", _maker()).apply(original)
    rules = {tag[:2]: action.__name__ for tag, action in profile_rules().items() if len(tag) == 2}
    for elem in _all_elements(out):
        assert not elem.tag.is_private or elem.tag.group == 0x0012, f"private {elem.tag} kept"
        kind = rules.get((elem.tag.group, elem.tag.element))
        if kind is None or elem.tag in (0x00120062, 0x00120063, 0x00120064):
            continue
        assert kind != "delete", f"{elem.keyword} kept"
        if kind == "empty" and elem.VR not in ("SQ", "UI"):
            assert elem.value in REMOVED_OR_DUMMY, f"{elem.keyword} = {elem.value!r}"
    for keyword in MUST_CHANGE:
        before = str(original.get(keyword, "") or "")
        if before:
            assert str(out.get(keyword, "") or "") != before, f"{path.name}: {keyword} passed on"
    # the strongest check: no identifying text of the original survives anywhere in the file
    encoded = dataset_to_bytes(out)
    for keyword in ("PatientName", "PatientID", "InstitutionName", "AccessionNumber", "StudyInstanceUID"):
        text = str(original.get(keyword, "") or "").strip()
        if len(text) >= 6:
            assert text.encode() not in encoded, f"{path.name}: {keyword} text found in the output"
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PixelData == original.PixelData  # pixels untouched (burned-in text is not covered)
    assert original.SOPInstanceUID == read_dicom(path).SOPInstanceUID  # the input is not modified


def test_uids_are_consistent_within_a_study_and_across_runs_not_across_destinations():
    a, b = (read_dicom(p) for p in CT)
    run1, run2 = Deidentifier("basic", _maker()), Deidentifier("basic", _maker())
    da, db = run1.apply(a), run1.apply(b)
    assert da.StudyInstanceUID == db.StudyInstanceUID and da.SeriesInstanceUID == db.SeriesInstanceUID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert (da.FrameOfReferenceUID == db.FrameOfReferenceUID) == (a.FrameOfReferenceUID == b.FrameOfReferenceUID)
    assert run2.apply(a).SOPInstanceUID == da.SOPInstanceUID  # another run (a gateway restart): the same
    other = Deidentifier("basic", _maker("destination:vendor")).apply(a)
    assert other.StudyInstanceUID != da.StudyInstanceUID


def test_dates_shifted_per_patient_birth_date_removed():
    a, b = (read_dicom(p) for p in CT)
    shift = Deidentifier("basic", _maker(), dates="shift")
    sa, sb = shift.apply(a), shift.apply(b)
    assert sa.StudyDate == sb.StudyDate != a.StudyDate and len(sa.StudyDate) == 8
    assert 1 <= int(a.StudyDate[:4]) - int(sa.StudyDate[:4]) <= 11
    assert sa.LongitudinalTemporalInformationModified == "MODIFIED"
    assert sa.DeidentificationMethodCodeSequence[1].CodeValue == "113107"
    mr = read_dicom(MR[0])
    assert mr.PatientBirthDate and shift.apply(mr).PatientBirthDate == ""  # Z: present, empty (Type 2)


def test_burned_in_annotation_is_refused():
    ds = read_dicom(CT[0])
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="BurnedInAnnotation"):
        Deidentifier("basic", _maker()).apply(ds)


@pytest.mark.parametrize("restore_identity", [False, True])
def test_strip_gives_the_deidentified_object_or_the_identified_original(site_keys, restore_identity):
    hospital, research = site_keys["hospital"], site_keys["research"]
    originals = [read_dicom(p) for p in (CT[0], PET[0], MR[0])]
    results = protect_many(originals, recipients=[research.cert], signer=hospital, profile="plain",
                           destination="research", deidentify="basic", restore_identity=restore_identity)
    deid = Deidentifier("basic", UidMaker(site_secret(hospital.key), scope_of("research", [research.cert])))
    for path, original, protected in zip((CT[0], PET[0], MR[0]), originals, results):
        assert not isinstance(protected, Exception), f"{path.name}: {protected}"
        identity = str(original.PatientID).encode()
        assert identity not in dataset_to_bytes(protected), path.name  # the protected object is de-identified
        record = decrypt(bytes(protected.EncryptedAttributesSequence[0].EncryptedContent), [research])
        assert (identity in record) == restore_identity, path.name  # and so is the record, unless restoring
        exact = strip_bytes(protected, keyring=[research], trust=[hospital.cert])
        want = path.read_bytes() if restore_identity else dataset_to_bytes(deid.apply(original))
        assert exact == want, path.name
        assert open_record(protected, [research]).protected_uid == protected.SOPInstanceUID


def test_burned_in_annotation_fails_that_input_only(site_keys):
    burned, fine = read_dicom(CT[0]), read_dicom(CT[1])
    burned.BurnedInAnnotation = "YES"
    results = protect_many([burned, fine], recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                           profile="plain", deidentify="basic")
    assert isinstance(results[0], BurnedInAnnotationError) and not isinstance(results[1], Exception)
    # without de-identification the same object is protected (its identity goes only into the record)
    protect(burned, recipients=[site_keys["research"].cert], signer=site_keys["hospital"], profile="plain")


def test_rule_options(tmp_path: Path):
    for name in ("hospital.key.pem", "hospital.cert.pem", "research.cert.pem"):
        (tmp_path / name).write_text("x")
    head = ("identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
            "destinations:\n  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 11113}\nrules:\n")
    cfg = parse_config(head + "  - send_to: [research]\n    action: protect\n    recipients: [research.cert.pem]\n"
                       "    deidentify: basic\n    restore_identity: true\n    deidentify_dates: shift\n",
                       base=tmp_path)
    decision = decide(cfg, read_dicom(CT[0]), destination="research")
    assert (decision.deidentify, decision.restore_identity, decision.deidentify_dates) == ("basic", True, "shift")
    with pytest.raises(Exception, match="deidentify is only for action protect"):
        parse_config(head + "  - send_to: [research]\n    action: pass\n    deidentify: basic\n", base=tmp_path)
    with pytest.raises(Exception, match="need deidentify"):
        parse_config(head + "  - send_to: [research]\n    action: protect\n    recipients: [research.cert.pem]\n"
                     "    restore_identity: true\n", base=tmp_path)


def test_cli_deidentify_then_strip(tmp_path: Path, site_keys):
    from miadmark.cli import main

    (h_key, h_cert), (r_key, r_cert) = site_keys["hospital_paths"], site_keys["research_paths"]
    common = ["--recipient", str(r_cert), "--sign-key", str(h_key), "--sign-cert", str(h_cert), "--profile", "plain",
              "--destination", "research", "--deidentify", "basic"]
    assert main(["protect", str(CT[0]), "--out", str(tmp_path / "p"), *common]) == 0
    assert main(["protect", str(CT[0]), "--out", str(tmp_path / "pi"), *common, "--restore-identity"]) == 0
    strip_args = ["--key", str(r_key), "--cert", str(r_cert), "--trust", str(h_cert)]
    assert main(["strip", str(tmp_path / "p"), "--out", str(tmp_path / "s"), *strip_args]) == 0
    assert main(["strip", str(tmp_path / "pi"), "--out", str(tmp_path / "si"), *strip_args]) == 0
    deid = Deidentifier("basic", UidMaker(site_secret(site_keys["hospital"].key), scope_of("research", [])))
    assert (tmp_path / "s" / CT[0].name).read_bytes() == dataset_to_bytes(deid.apply(read_dicom(CT[0])))
    assert (tmp_path / "si" / CT[0].name).read_bytes() == CT[0].read_bytes()
    assert main(["protect", str(CT[0]), "--out", str(tmp_path / "x"), *common[:-2], "--restore-identity"]) == 2


def test_a_lesion_source_sent_unprotected_is_deidentified_with_the_same_mapping(site_keys):
    """A SEG forwarded without watermark on a de-identified route: its references point at the UIDs the
    recipient gets back when it strips the images."""
    from miadmark.deid import deidentify

    hospital, research = site_keys["hospital"], site_keys["research"]
    seg = read_dicom(DICOM_DATA / "pet_seg_headneck" / "SEG_tumor_User1_Manual_Trial1.dcm")
    referenced = {str(item.ReferencedSOPInstanceUID) for frame in seg.PerFrameFunctionalGroupsSequence
                  for derivation in frame.get("DerivationImageSequence", [])
                  for item in derivation.get("SourceImageSequence", [])}
    image = next(ds for ds in (read_dicom(p) for p in sorted((DICOM_DATA / "pet_seg_headneck" / "PET").glob("*.dcm")))
                 if str(ds.SOPInstanceUID) in referenced)
    protected = protect(image, recipients=[research.cert], signer=hospital, profile="plain", destination="research",
                        deidentify="basic")
    stripped_uid = read_dicom_bytes(strip_bytes(protected, keyring=[research], trust=[hospital.cert])).SOPInstanceUID
    out = deidentify(seg, signer=hospital, recipients=[research.cert], destination="research")
    references = {str(item.ReferencedSOPInstanceUID) for frame in out.PerFrameFunctionalGroupsSequence
                  for derivation in frame.get("DerivationImageSequence", [])
                  for item in derivation.get("SourceImageSequence", [])}
    assert stripped_uid in references and not references & referenced
    assert out.StudyInstanceUID == protected.StudyInstanceUID != seg.StudyInstanceUID
    assert str(seg.PatientID) not in str(out.get("PatientID", ""))


@pytest.mark.parametrize("dates", ["remove", "shift"])
def test_actions_keep_type_2_present_and_give_values_valid_for_their_vr(dates):
    """Z keeps an empty element (Type 2 stays present), X removes, D gives a dummy valid for the VR, and the
    method code sequence names the options applied (PS3.15 E.1.1, PS3.16 CID 7050)."""
    original = read_dicom(CT[0])
    original.PatientBirthDate, original.AdmittingDate, original.StationName = "19580214", "20010101", "CT-ROOM-3"
    original.AcquisitionDateTime, original.SeriesTime = "20010101101010.5", "101010"
    out = Deidentifier("basic", _maker(), dates=dates).apply(original)
    emptied = ("PatientName", "PatientBirthDate", "PatientSex", "StudyTime", "AccessionNumber", "StudyID",
               "ReferringPhysicianName") + (("StudyDate",) if dates == "remove" else ())
    for keyword in emptied:  # Z: Type 2, present and empty
        assert keyword in out and str(out[keyword].value or "") == "", keyword
    assert out.StationName == out.PatientID == "ANONYMIZED"  # X/Z/D, Z/D: a dummy that is a valid SH, LO
    if dates == "remove":
        assert "AdmittingDate" not in out  # X: removed, not set to a dummy
        assert (out.SeriesDate, out.AcquisitionDateTime, out.SeriesTime) == ("19000101", "19000101000000", "000000")
        assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
        assert out.LongitudinalTemporalInformationModified == "REMOVED"
    else:
        shifted = out.AdmittingDate  # a date kept by the option, moved back with the others
        days = (dt.date(2001, 1, 1) - dt.datetime.strptime(shifted, "%Y%m%d").date()).days
        assert 1 <= days <= 3650 and out.AcquisitionDateTime == shifted + "101010.5"
        codes = [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in out.DeidentificationMethodCodeSequence]
        assert codes == [("113100", "DCM", "Basic Application Confidentiality Profile"),
                ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")]
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientIdentityRemoved == "YES" and dates in out.DeidentificationMethod
