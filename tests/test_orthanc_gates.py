"""Real Orthanc: the routes that would let originals out (issue 15, findings 7, 8 and 9).

hospital (plugin; `research` is protect, `archive` is pass; raw_downloads: refuse). Nothing is sent
anywhere here: each route is refused (or allowed) before any transfer.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from orthanc_plugin.testing import OrthancProcess, free_port, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

CT = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314"
             / "data").glob("*.dcm"))[:2]
CONFIG = ("identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
          "destinations:\n"
          "  research: {orthanc_modality: research}\n"
          "  archive:  {orthanc_modality: archive}\n"
          "  viewer:   {orthanc_modality: viewer}\n"
          "orthanc: {raw_downloads: refuse}\n"
          "rules:\n"
          "  - send_to: [research, viewer]\n"
          "    action: protect\n"
          "    recipients: [research.cert.pem]\n"
          "    profile: plain\n"
          "  - send_to: [archive]\n"
          "    action: pass\n")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    from miadmark.keys import new_identity

    tmp = tmp_path_factory.mktemp("orthanc-gates")
    new_identity("hospital", tmp)
    new_identity("research", tmp)
    (tmp / "hospital.yaml").write_text(CONFIG)
    site = OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                          modalities={n: [n.upper(), "127.0.0.1", free_port()] for n in ("research", "archive")})
    with site:
        site.study = None
        for f in CT:
            site.study = site.upload(f)["ParentStudy"]
        site.tmp = tmp
        yield site


def test_protect_and_send_offers_and_accepts_only_protect_destinations(hospital):
    assert [d["Name"] for d in hospital.get_json("/miadmark/destinations")] == ["research", "viewer"]
    response = hospital.post("/miadmark/protect", {"Study": hospital.study, "Destination": "archive"})
    assert response.status_code == 403 and "pass" in response.text, response.text
    assert not [j for j in hospital.get_json("/miadmark/status")["Recent"] if "archive" in j["Description"]]
    response = hospital.post("/miadmark/protect", {"Study": hospital.study, "Destination": "research"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["Destination"] == "research" and answer["Protect"] == len(CT) and answer["Pass"] == 0
    listed = {j["ID"]: j for j in hospital.get_json("/jobs?expand") if isinstance(j, dict)}
    assert listed[answer["ID"]]["Type"] == "MiadmarkProtect"  # on the Explorer's Jobs page


def test_c_get_is_decided_when_a_modality_is_added_at_run_time(hospital):
    viewer = {"AET": "VIEWER", "Host": "127.0.0.1", "Port": 9, "AllowGet": True}
    assert hospital.put("/modalities/viewer", viewer).status_code == 200
    assert hospital.get_json("/modalities/viewer/configuration")["AllowGet"] is False  # protect: no raw C-GET
    assert hospital.put("/modalities/archive", {**viewer, "AET": "ARCHIVE"}).status_code == 200
    assert hospital.get_json("/modalities/archive/configuration")["AllowGet"] is True  # unconditional pass
    assert "viewer" in hospital.get_json("/modalities")
    assert hospital.delete("/modalities/viewer").status_code == 200
    assert "viewer" not in hospital.get_json("/modalities")


def test_raw_downloads_are_refused_when_configured(hospital):
    instance = hospital.instances()[0]
    header = pydicom.dcmread(CT[0], stop_before_pixels=True)
    refused = [f"/instances/{instance}/file", f"/studies/{hospital.study}/archive", f"/studies/{hospital.study}/media",
               f"/instances/{instance}/frames/0/raw", f"/instances/{instance}/preview",
               f"/dicom-web/studies/{header.StudyInstanceUID}",
               f"/wado?requestType=WADO&studyUID={header.StudyInstanceUID}&seriesUID={header.SeriesInstanceUID}"
               f"&objectUID={header.SOPInstanceUID}&contentType=application/dicom"]
    for path in refused:
        assert hospital.get(path).status_code == 403, path
    assert hospital.post("/tools/create-archive", {"Resources": [hospital.study]}).status_code == 403
    for path in (f"/instances/{instance}/tags", "/dicom-web/studies", f"/studies/{hospital.study}"):
        assert hospital.get(path).status_code == 200, path  # headers and queries stay open


def test_always_allow_get_shuts_orthanc_down(hospital, tmp_path):
    site = OrthancProcess(tmp_path / "h2", aet="HOSPITAL2", miadmark_config=hospital.tmp / "hospital.yaml",
                          extra={"DicomAlwaysAllowGet": True})
    try:
        site.start()
    except RuntimeError:
        pass  # exited before it answered
    try:
        assert site.process.wait(timeout=60) is not None
        assert "DicomAlwaysAllowGet" in site.log_tail(200)
    finally:
        site.stop()
