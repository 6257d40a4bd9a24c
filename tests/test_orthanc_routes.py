"""Real Orthanc: auto-export of a stable study, and the peer and DICOMweb export routes.

hospital (plugin; rule `auto: true` to research; protect to the plain receiver's peer and DICOMweb
entries) -> research (plugin + research key) and plain (no plugin, no key).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pydicom
import pytest

from orthanc_plugin.testing import OrthancProcess, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

SLICES = 4
CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from miadmark.keys import new_identity

    tmp = tmp_path_factory.mktemp("orthanc-routes")
    new_identity("hospital", tmp)
    new_identity("research", tmp)
    (tmp / "research.yaml").write_text(
        "receiver:\n"
        "  quarantine: quarantine/\n"
        "  keys: [{key: research.key.pem, cert: research.cert.pem}]\n"
        "  trust: [hospital.cert.pem]\n")
    (tmp / "hospital.yaml").write_text(
        "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
        "destinations:\n"
        "  research: {orthanc_modality: research}\n"
        "  partner:  {orthanc_peer: partner}\n"
        "  cloud:    {orthanc_dicomweb: cloud}\n"
        "  plainmod: {orthanc_modality: plainmod}\n"
        "rules:\n"
        "  - send_to: [research]\n"
        "    action: protect\n"
        "    recipients: [research.cert.pem]\n"
        "    profile: plain\n"
        "    auto: true\n"
        "  - send_to: [partner, cloud, plainmod]\n"
        "    when: {Modality: CT}\n"
        "    action: protect\n"
        "    recipients: [research.cert.pem]\n"
        "    profile: plain\n")
    plain = OrthancProcess(tmp / "plain", aet="PLAIN", plugin=False).start()
    started = [plain]
    try:
        research = OrthancProcess(tmp / "research", aet="RESEARCH", miadmark_config=tmp / "research.yaml").start()
        started.append(research)
        hospital = OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                                  modalities={"research": research, "plainmod": plain,
                                              "viewer": ["VIEWER", "127.0.0.1", 9]},
                                  peers={"partner": plain},
                                  dicomweb={"cloud": plain}, stable_age=2).start()
        started.append(hospital)
    except BaseException:
        for site in started:
            site.stop()
        raise
    files = sorted(CT.glob("*.dcm"))[:SLICES]
    study = None
    for f in files:
        study = hospital.upload(f)["ParentStudy"]
    yield {"hospital": hospital, "research": research, "plain": plain, "files": files, "study": study,
           "config": tmp / "hospital.yaml"}
    for site in started:
        site.stop()


def _uids(files):
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_stable_study_is_sent_by_an_auto_rule(sites):
    research = sites["research"]
    stored = research.wait_for(lambda: len(research.instances()) >= SLICES, timeout=60)
    assert stored, research.log_tail() + "\n" + sites["hospital"].log_tail()
    got = {research.get_json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in research.instances()}
    assert got == _uids(sites["files"])  # stripped back to the originals
    hospital = sites["hospital"]
    done = hospital.wait_for(lambda: any("auto-export" in j["Description"] and j["State"] == "Success"
                                         for j in hospital.get_json("/miadmark/status")["Recent"]), timeout=30)
    assert done, hospital.get_json("/miadmark/status")


@pytest.mark.parametrize("route", ["/peers/partner/store", "/dicom-web/servers/cloud/stow"])
def test_peer_and_dicomweb_exports_are_protected(sites, route):
    hospital, plain = sites["hospital"], sites["plain"]
    before = set(plain.instances())
    response = hospital.post(route, {"Resources": [sites["study"]], "Synchronous": True})
    assert response.status_code == 200, response.text
    new = set(plain.instances()) - before
    assert len(new) == SLICES
    originals = _uids(sites["files"])
    for iid in new:
        ds = pydicom.dcmread(io.BytesIO(plain.get(f"/instances/{iid}/file").content))
        assert "EncryptedAttributesSequence" in ds and ds.SOPInstanceUID not in originals


def test_raw_routes_to_protect_destinations_are_refused(sites):
    hospital = sites["hospital"]
    raw = sites["files"][0].read_bytes()
    assert hospital.post("/peers/partner/store-straight", raw).status_code == 403
    assert hospital.post("/dicom-web/servers/cloud/post", {"Uri": "/studies"}).status_code == 403


def test_protect_route_and_status(sites):
    hospital = sites["hospital"]
    assert hospital.post("/miadmark/protect", {"Study": sites["study"], "Destination": "nowhere"}).status_code == 404
    response = hospital.post("/miadmark/protect", {"Study": sites["study"], "Destination": "partner",
                                                   "Synchronous": True})
    assert response.status_code == 200, response.text
    job = hospital.get_json(response.json()["Path"])
    assert job["State"] == "Success" and job["DoneCount"] == job["Content"]["Protect"] == SLICES
    status = hospital.get_json("/miadmark/status")
    assert status["Loaded"] and set(status["Destinations"]) == {"research", "partner", "cloud", "plainmod"}
    assert hospital.get_json("/miadmark/destinations")[0]["Name"] == "research"
    assert "Protect and send" in hospital.get("/plugins/explorer.js").text  # the Explorer button is served


def _c_move(hospital, study_uid: str, destination: str) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", hospital.dicom_port, ae_title=hospital.aet)
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    status = None
    try:
        for status_ds, _ in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove):
            if status_ds is not None and "Status" in status_ds:
                status = int(status_ds.Status)
    finally:
        assoc.release()
    return status


def test_c_move_goes_through_the_rules(sites):
    hospital, plain = sites["hospital"], sites["plain"]
    study_uid = pydicom.dcmread(sites["files"][0], stop_before_pixels=True).StudyInstanceUID
    before = set(plain.instances())
    assert _c_move(hospital, study_uid, "VIEWER") not in (0x0000, None)  # no destination names "viewer"
    assert _c_move(hospital, study_uid, "PLAIN") == 0x0000
    new = set(plain.instances()) - before
    assert len(new) == SLICES
    for iid in new:
        ds = pydicom.dcmread(io.BytesIO(plain.get(f"/instances/{iid}/file").content), stop_before_pixels=True)
        assert "EncryptedAttributesSequence" in ds


def test_c_get_is_closed_for_modalities_the_rules_do_not_pass(sites):
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    hospital = sites["hospital"]
    for name in ("viewer", "research", "plainmod"):
        assert hospital.get_json(f"/modalities/{name}/configuration")["AllowGet"] is False
    received = []
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", hospital.dicom_port, ae_title=hospital.aet,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(1) or 0x0000)])
    if assoc.is_established:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = pydicom.dcmread(sites["files"][0], stop_before_pixels=True).StudyInstanceUID
        try:
            for _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                pass
        finally:
            assoc.release()
    assert received == []


def test_a_bad_configuration_keeps_the_running_rules(sites):
    hospital, config = sites["hospital"], sites["config"]
    good = config.read_text()
    try:
        config.write_text(good.replace("action: protect", "action: protekt", 1))
        status = hospital.get_json("/miadmark/status")
        assert status["Loaded"] and re.search(r"hospital\.yaml:\d+: ", status["Error"]), status["Error"]
        assert hospital.post("/modalities/nowhere/store", [sites["study"]]).status_code == 403
        response = hospital.post("/miadmark/protect", {"Study": sites["study"], "Destination": "partner",
                                                       "Synchronous": True})
        assert response.status_code == 200 and response.json()["State"] == "Success"
    finally:
        config.write_text(good)
    assert hospital.get_json("/miadmark/status")["Error"] is None


def test_dicomweb_plugin_loaded_first_cannot_send_raw(sites, tmp_path):
    """With libOrthancDicomWeb.so before libOrthancPython.so the DICOMweb plugin's own stow route
    answers first: the plugin detects it and refuses that route for protect destinations."""
    from orthanc_plugin.testing import DICOMWEB_PLUGIN, PYTHON_PLUGIN

    plain = sites["plain"]
    hospital = OrthancProcess(tmp_path / "h2", aet="HOSPITAL2", miadmark_config=sites["config"],
                              dicomweb={"cloud": plain},
                              extra={"Plugins": [str(DICOMWEB_PLUGIN), str(PYTHON_PLUGIN)]}).start()
    try:
        study = hospital.upload(sites["files"][0])["ParentStudy"]
        before = set(plain.instances())
        response = hospital.post("/dicom-web/servers/cloud/stow", {"Resources": [study], "Synchronous": True})
        assert response.status_code == 403
        assert set(plain.instances()) == before
    finally:
        hospital.stop()
