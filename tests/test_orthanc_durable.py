"""Durable exports through real Orthanc processes (issue 15): kill -9 and restart, retry with backoff,
dead letter, auto rules that honour `when`, catch-up of studies that became stable while Orthanc was
down, and a study deleted and received again.

hospital (plugin; retry 6 attempts, 0.5-2 s) -> plain / partner / late (Orthanc without the plugin and
without a key: they keep the protected objects, so each one is opened here with the research key to
find its original: exactly once per original, none unprotected).
"""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import pydicom
import pytest

from orthanc_plugin.testing import OrthancProcess, free_port, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:16]
PET = sorted((DATA / "pet_seg_headneck" / "PET").glob("*.dcm"))[:8]
MR = sorted((DATA / "enhanced_mr").rglob("*.dcm"))[:2]


def _uid(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from miadmark.keys import load_identity, new_identity

    tmp = tmp_path_factory.mktemp("orthanc-durable")
    new_identity("hospital", tmp)
    key, cert = new_identity("research", tmp)
    (tmp / "hospital.yaml").write_text(
        "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
        "destinations:\n"
        "  plain:   {orthanc_modality: plain}\n"
        "  partner: {orthanc_modality: partner}\n"
        "  late:    {orthanc_modality: late}\n"
        "  nowhere: {orthanc_modality: nowhere}\n"
        "orthanc:\n"
        "  retry: {max_attempts: 6, base_s: 0.5, max_s: 2}\n"
        "rules:\n"
        "  - send_to: [partner]\n"
        "    when: {PatientID: ['LIDC*', 'QIN*']}\n"
        "    action: protect\n"
        "    recipients: [research.cert.pem]\n"
        "    profile: plain\n"
        "    auto: true\n"
        "  - send_to: [partner, plain, late, nowhere]\n"  # manual exports; also to partner (finding 1)
        "    action: protect\n"
        "    recipients: [research.cert.pem]\n"
        "    profile: plain\n")
    plain = OrthancProcess(tmp / "plain", aet="PLAIN", plugin=False).start()
    partner = OrthancProcess(tmp / "partner", aet="PARTNER", plugin=False).start()
    late = OrthancProcess(tmp / "late", aet="LATE", plugin=False)  # started by a test
    hospital = OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                              modalities={"plain": plain, "partner": partner, "late": late,
                                          "nowhere": ["NOWHERE", "127.0.0.1", free_port()]}, stable_age=2)
    try:
        hospital.start()
    except BaseException:
        plain.stop()
        partner.stop()
        raise
    yield {"hospital": hospital, "plain": plain, "partner": partner, "late": late,
           "research": load_identity(key, cert)}
    for site in (hospital, plain, partner, late):
        site.stop()


def _originals(site: OrthancProcess, research) -> list[str]:
    """The original SOP Instance UID of every instance `site` holds, opened with the research key
    (an unprotected instance fails the test)."""
    from miadmark.protect import strip

    found = []
    for iid in site.instances():
        ds = pydicom.dcmread(io.BytesIO(site.get(f"/instances/{iid}/file").content))
        assert "EncryptedAttributesSequence" in ds, f"{iid} at {site.aet} is not protected"
        found.append(str(strip(ds, keyring=[research], trust=None).SOPInstanceUID))
    return found


def _crash_and_restart(hospital: OrthancProcess, receiver: OrthancProcess, at: int) -> None:
    assert receiver.wait_for(lambda: len(receiver.instances()) >= at, timeout=120, interval=0.05), \
        hospital.log_tail()
    hospital.kill()
    hospital.start()


def test_auto_export_survives_kill_9_and_sends_only_matching_studies(sites):
    hospital, partner = sites["hospital"], sites["partner"]
    for f in CT + MR:
        hospital.upload(f)
    _crash_and_restart(hospital, partner, at=random.randint(2, len(CT) - 4))
    done = partner.wait_for(lambda: len(partner.instances()) >= len(CT), timeout=120)
    assert done, hospital.log_tail()
    time.sleep(3)  # the MR study is stable too by now: nothing of it may follow
    got = _originals(partner, sites["research"])
    assert sorted(got) == sorted(_uid(f) for f in CT)  # exactly once per original; no MR (finding 1)
    status = hospital.get_json("/miadmark/status")
    autos = [j for j in status["Recent"] if "auto-export" in j["Description"]]
    assert autos and all(j["State"] == "Success" for j in autos), status["Recent"]
    listed = hospital.get_json("/jobs")
    assert any(j["ID"] in listed for j in autos)  # plugin jobs in Orthanc's job list, after a restart


def test_study_that_became_stable_while_orthanc_was_down_is_exported(sites):
    hospital, partner = sites["hospital"], sites["partner"]
    before = len(partner.instances())
    for f in PET:
        hospital.upload(f)
    hospital.kill()  # before StableAge (2 s): no stable-study event was ever fired
    time.sleep(2.5)
    hospital.start()
    assert partner.wait_for(lambda: len(partner.instances()) >= before + len(PET), timeout=120), hospital.log_tail()
    got = _originals(partner, sites["research"])
    assert sorted(u for u in got if u in {_uid(f) for f in PET}) == sorted(_uid(f) for f in PET)


def test_study_deleted_and_received_again_is_exported_again(sites):
    hospital, partner = sites["hospital"], sites["partner"]
    for study in partner.get_json("/studies"):  # protected UIDs are stable: an earlier export would be the same
        assert partner.delete(f"/studies/{study}").status_code == 200
    before = len(partner.instances())
    assert before == 0
    study = hospital.upload(PET[0])["ParentStudy"]
    assert hospital.delete(f"/studies/{study}").status_code == 200
    for f in PET:
        hospital.upload(f)
    assert partner.wait_for(lambda: len(partner.instances()) >= before + len(PET), timeout=60), hospital.log_tail()
    time.sleep(3)
    assert len(partner.instances()) == before + len(PET)  # once more, not twice


def test_manual_export_survives_kill_9_and_the_job_resumes(sites):
    hospital, plain = sites["hospital"], sites["plain"]
    study = [hospital.upload(f) for f in CT][0]["ParentStudy"]  # stored already when the module runs whole
    response = hospital.post("/modalities/plain/store", {"Resources": [study], "Asynchronous": True})
    assert response.status_code == 200, response.text
    job = response.json()["ID"]
    _crash_and_restart(hospital, plain, at=random.randint(2, len(CT) - 4))
    state = hospital.wait_for(lambda: hospital.get_json(f"/jobs/{job}")["State"] == "Success"
                              and hospital.get_json(f"/jobs/{job}"), timeout=120)
    assert state and state["DoneCount"] == len(CT), hospital.get_json(f"/jobs/{job}")
    assert sorted(_originals(plain, sites["research"])) == sorted(_uid(f) for f in CT)


def test_destination_down_then_up_completes_on_its_own(sites):
    hospital, late = sites["hospital"], sites["late"]
    ids = [hospital.upload(f)["ID"] for f in CT[:3]]  # stored already when the module runs whole
    job = hospital.post("/modalities/late/store", {"Resources": ids, "Asynchronous": True}).json()["ID"]
    retrying = hospital.wait_for(lambda: hospital.get_json("/miadmark/status")["Retrying"] >= 1, timeout=30)
    assert retrying, hospital.get_json("/miadmark/status")
    entry = next(q for q in hospital.get_json("/miadmark/status")["Queue"] if q["destination"] == "late")
    assert entry["retrying"] >= 1 and "LATE" in entry["last_error"]
    late.start()
    done = hospital.wait_for(lambda: hospital.get_json(f"/jobs/{job}")["State"] == "Success", timeout=60)
    assert done, hospital.get_json(f"/jobs/{job}")
    assert sorted(_originals(late, sites["research"])) == sorted(_uid(f) for f in CT[:3])


def test_unreachable_destination_ends_in_a_dead_letter_with_a_reason(sites):
    hospital = sites["hospital"]
    ids = [hospital.upload(f)["ID"] for f in CT[:2]]
    job = hospital.post("/modalities/nowhere/store", {"Resources": ids, "Asynchronous": True}).json()["ID"]
    state = hospital.wait_for(lambda: hospital.get_json(f"/jobs/{job}")["State"] == "Failure"
                              and hospital.get_json(f"/jobs/{job}"), timeout=60)
    assert state and state["FailedInstancesCount"] == 2, hospital.get_json(f"/jobs/{job}")
    status = hospital.get_json("/miadmark/status")
    dead = [d for d in status["DeadLetters"] if d["Destination"] == "nowhere"]
    assert len(dead) == 2 and all(d["Attempts"] == 6 and "NOWHERE" in d["Reason"] for d in dead), dead
    assert status["Dead"] >= 2 and any(j["ID"] == job for j in status["Failed"])
    # a caller that waits (Synchronous) gets one attempt and the answer, nothing retried behind it
    response = hospital.post("/modalities/nowhere/store", {"Resources": ids[:1], "Synchronous": True})
    assert response.status_code == 500 and response.json()["FailedInstancesCount"] == 1
    assert hospital.post("/miadmark/retry", {"Destination": "nowhere"}).json()["Requeued"] == 3
    assert hospital.get_json(f"/jobs/{job}")["State"] in ("Pending", "Running")  # dead letters queued again
