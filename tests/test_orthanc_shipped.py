"""The shipped two-site configuration (orthanc.json + miadmark.yaml, orthanc-research.json +
miadmark-research.yaml) run as shipped, with only ports, folders and key locations changed: a study
exported by the hospital arrives at the research Orthanc as the originals (issue 15, finding 10)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pydicom
import pytest

from miadmark.config import load_config
from orthanc_plugin.testing import OrthancProcess, missing

REPO = Path(__file__).resolve().parents[1]
CT = sorted((REPO.parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:3]
OURS = {"Name", "StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort", "Plugins", "PythonScript",
        "MiadMark", "DicomModalities", "OrthancPeers", "DicomWeb", "RemoteAccessAllowed", "AuthenticationEnabled"}


def _orthanc_json(name: str) -> dict:
    text = (REPO / name).read_text()
    return json.loads(re.sub(r"^\s*//.*$|\s//\s.*$", "", text, flags=re.M))  # Orthanc's JSON has comments


def test_shipped_hospital_config_sends_nothing_by_itself():
    cfg = load_config(REPO / "miadmark.yaml", check_files=False)
    assert not any(rule.auto for rule in cfg.rules)  # no CPU-heavy auto-export after every upload
    assert all(rule.profile in (None, "auto") for rule in cfg.rules if rule.action == "protect")  # the default
    research = load_config(REPO / "miadmark-research.yaml", check_files=False)
    assert research.receiver is not None and research.receiver.trust and not research.rules
    assert _orthanc_json("orthanc.json")["DicomModalities"]["research"][2] == _orthanc_json(
        "orthanc-research.json")["DicomPort"]


def test_every_shipped_config_uses_the_default_profile():
    """No shipped configuration trades the adversarial watermark for speed: `auto` keeps up on a CPU."""
    import yaml

    shipped = [*REPO.glob("miadmark*.yaml"), *(REPO / "packaging").rglob("*.yaml")]
    rules = [r for path in shipped for r in (yaml.safe_load(path.read_text()) or {}).get("rules", [])]
    assert rules and all(r.get("profile", "auto") == "auto" for r in rules), shipped
    for path in [*REPO.glob("orthanc*.json"), *(REPO / "packaging").rglob("*.json")]:
        assert '"plain"' not in path.read_text(), path


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_shipped_two_sites_deliver_the_originals(tmp_path):
    from miadmark.keys import new_identity

    for site in ("hospital", "research"):
        (tmp_path / site / "keys").mkdir(parents=True)
        new_identity(site, tmp_path / site / "keys")
    shutil.copy(tmp_path / "research/keys/research.cert.pem", tmp_path / "hospital/keys")  # the exchange
    shutil.copy(tmp_path / "hospital/keys/hospital.cert.pem", tmp_path / "research/keys")
    shutil.copy(REPO / "miadmark.yaml", tmp_path / "hospital")
    shutil.copy(REPO / "miadmark-research.yaml", tmp_path / "research")
    shipped_h, shipped_r = _orthanc_json("orthanc.json"), _orthanc_json("orthanc-research.json")
    research = OrthancProcess(tmp_path / "research/orthanc", aet=shipped_r["DicomAet"],
                              miadmark_config=tmp_path / "research/miadmark-research.yaml",
                              extra={k: v for k, v in shipped_r.items() if k not in OURS})
    hospital = OrthancProcess(tmp_path / "hospital/orthanc", aet=shipped_h["DicomAet"],
                              miadmark_config=tmp_path / "hospital/miadmark.yaml", modalities={"research": research},
                              extra={k: v for k, v in shipped_h.items() if k not in OURS})
    research.config["DicomModalities"]["hospital"] = [hospital.aet, "127.0.0.1", hospital.dicom_port]
    with research, hospital:
        study = None
        for f in CT:
            study = hospital.upload(f)["ParentStudy"]
        response = hospital.post("/modalities/research/store", {"Resources": [study], "Synchronous": True})
        assert response.status_code == 200, response.text
        got = {research.get_json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in research.instances()}
        assert got == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in CT}
        assert research.get_json("/miadmark/status")["Receiver"]["Counts"]["stripped"] == len(CT)
