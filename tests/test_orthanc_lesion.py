"""Orthanc plugin, real Orthanc processes: an export keeps the watermark off the SEG's lesion.

hospital (plugin) holds a SEG and a few of the PET slices of its study; exports to a plain
Orthanc (no plugin, no key) protect the slices with the SEG's masks, and the SEG itself arrives
unchanged. The SEG is found in Orthanc also when the export names only the slices.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from miadmark.lesion import masks_from_seg
from orthanc_plugin.testing import OrthancProcess, missing

from test_orthanc_export import _without_group_lengths

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "pet_seg_headneck"
SEG = FOLDER / "SEG_tumor_User1_Manual_Trial1.dcm"


@pytest.fixture(scope="module")
def sites(tmp_path_factory, site_keys):
    tmp = tmp_path_factory.mktemp("orthanc-lesion")
    key, cert = site_keys["hospital_paths"]
    (tmp / "hospital.yaml").write_text(
        f"identity: {{key: {key}, cert: {cert}}}\n"
        "destinations:\n"
        "  partner: {orthanc_modality: partner}\n"
        "rules:\n"
        "  - send_to: [partner]\n"
        "    action: protect\n"
        f"    recipients: [{site_keys['research_paths'][1]}]\n"
        "    profile: plain\n")
    masks = masks_from_seg(pydicom.dcmread(SEG))
    referenced, other = [], []
    for path in sorted((FOLDER / "PET").glob("*.dcm")):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (referenced if uid in masks else other).append(path)
    slices = referenced[:2] + other[:1]
    with OrthancProcess(tmp / "partner", aet="PARTNER", plugin=False) as partner, \
            OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                           modalities={"partner": partner}) as hospital:
        study = hospital.upload(SEG)["ParentStudy"]
        pet_ids = [hospital.upload(path)["ID"] for path in slices]
        yield {"hospital": hospital, "partner": partner, "study": study, "pet_ids": pet_ids, "slices": slices,
               "masks": masks}


def export(sites, resources: list[str]) -> tuple[dict, dict[str, pydicom.Dataset]]:
    """Synchronous export to the partner; its answer and what the partner got from it, by the
    original's ImagePositionPatient (the SEG by its SOP Instance UID)."""
    hospital, partner = sites["hospital"], sites["partner"]
    # protected UIDs are stable per destination (miadmark.uids): an instance exported again is the same
    # instance at the partner, so start from an empty partner to see what this export sent
    for iid in partner.instances():
        requests.delete(f"{partner.url}/instances/{iid}", timeout=60).raise_for_status()
    before = set(partner.instances())
    response = hospital.post("/modalities/partner/store", {"Resources": resources, "Synchronous": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = answer["InstancesCount"]
    new = partner.wait_for(lambda: len(set(partner.instances()) - before) >= expected
                           and set(partner.instances()) - before, timeout=30)
    got = {}
    for iid in new:
        ds = pydicom.dcmread(io.BytesIO(partner.get(f"/instances/{iid}/file").content))
        got[str(ds.SOPInstanceUID) if ds.Modality == "SEG" else str(ds.ImagePositionPatient)] = ds
    return answer, got


def check_protected_off_lesion(sites, got: dict[str, pydicom.Dataset]) -> None:
    for path in sites["slices"]:
        original = pydicom.dcmread(path)
        protected = got[str(original.ImagePositionPatient)]
        assert "EncryptedAttributesSequence" in protected and protected.SOPInstanceUID != original.SOPInstanceUID
        changed = protected.pixel_array != original.pixel_array
        assert changed.any()  # the logo is there
        mask = sites["masks"].get(str(original.SOPInstanceUID))
        if mask is not None:
            assert mask.any() and not changed[mask].any()  # zero lesion pixels changed
            assert np.array_equal(protected.pixel_array[mask], original.pixel_array[mask])


def test_study_export_protects_slices_with_the_seg_mask_and_sends_the_seg_unchanged(sites):
    answer, got = export(sites, [sites["study"]])
    content = answer["MiadMark"]["Content"]
    seg = pydicom.dcmread(SEG)
    assert answer["InstancesCount"] == 4 and answer["FailedInstancesCount"] == 0, answer
    assert answer["MiadMark"]["State"] == "Success" and not answer["MiadMark"]["Errors"]
    assert content["Protect"] == 3 and content["ProtectedSent"] == 3 and content["LesionMasked"] == 2
    assert content["LesionSourcesForwardedUnchanged"] == [seg.SOPInstanceUID]
    assert len(got) == 4
    arrived = got[seg.SOPInstanceUID]
    assert "EncryptedAttributesSequence" not in arrived and arrived.PixelData == seg.PixelData
    assert _without_group_lengths(arrived) == _without_group_lengths(seg)
    # Equal element by element, not byte for byte: Orthanc's core C-STORE (DCMTK) sends any stored
    # instance with its undefined-length sequences re-encoded with explicit lengths (checked with a
    # SEG sent between two Orthancs without the plugin).
    check_protected_off_lesion(sites, got)


def test_export_of_the_slices_alone_still_uses_the_seg_held_in_orthanc(sites):
    answer, got = export(sites, sites["pet_ids"])
    content = answer["MiadMark"]["Content"]
    seg_uid = str(pydicom.dcmread(SEG, stop_before_pixels=True).SOPInstanceUID)
    assert answer["InstancesCount"] == 3 and answer["FailedInstancesCount"] == 0, answer
    assert content["LesionSourcesUsed"] == [seg_uid] and content["LesionMasked"] == 2
    assert content["LesionSourcesForwardedUnchanged"] == [] and seg_uid not in got
    check_protected_off_lesion(sites, got)


def test_auto_export_sends_a_late_seg_unchanged_and_says_its_slices_went_without_it(sites, tmp_path):
    """Auto-export waits for the study to be stable; a SEG stored after that cannot protect slices
    already sent: it follows unchanged, and the log says so."""
    config = tmp_path / "auto.yaml"
    config.write_text((sites["hospital"].workdir.parent / "hospital.yaml").read_text()
                      .replace("action: protect", "action: protect\n    auto: true"))
    seg = pydicom.dcmread(SEG)
    with OrthancProcess(tmp_path / "partner", aet="PARTNER", plugin=False) as partner, \
            OrthancProcess(tmp_path / "auto", aet="AUTO", miadmark_config=config, stable_age=1,
                           modalities={"partner": partner}) as auto:
        for path in sites["slices"][:2]:
            auto.upload(path)
        assert partner.wait_for(lambda: len(partner.instances()) == 2, timeout=30)
        seg_id = auto.upload(SEG)["ID"]
        late = f"lesion source(s) {seg.SOPInstanceUID} arrived after 2 instance(s)"
        assert auto.wait_for(lambda: late in auto.log_tail(200), timeout=30), auto.log_tail()
        assert partner.wait_for(lambda: seg_id in partner.instances(), timeout=30)  # same UIDs, same Orthanc ID
        arrived = pydicom.dcmread(io.BytesIO(partner.get(f"/instances/{seg_id}/file").content))
        assert _without_group_lengths(arrived) == _without_group_lengths(seg)
        assert len(partner.instances()) == 3  # the slices were not sent again
