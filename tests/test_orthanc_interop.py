"""Interop: what the Orthanc plugin protects, the dicom_node receiving node strips (one YAML format).

hospital Orthanc (plugin) --/modalities/research/store--> `miadmark receive` (pynetdicom SCP,
research key) -> store/<Study>/<Series>/<SOP>.dcm equal to the sources as datasets.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from orthanc_plugin.testing import OrthancProcess, free_port, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

SLICES = 4
CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def _without_group_lengths(ds):
    for elem in list(ds):
        if elem.tag.element == 0x0000:
            del ds[elem.tag]
    return ds


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"miadmark receive exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("miadmark receive did not listen in time")


def test_orthanc_protects_and_the_dicom_node_receiver_strips(tmp_path):
    from miadmark.keys import new_identity

    new_identity("hospital", tmp_path)
    new_identity("research", tmp_path)
    port = free_port()
    (tmp_path / "research.yaml").write_text(
        "receiver:\n"
        "  ae_title: RESEARCH\n"
        "  bind: 127.0.0.1\n"
        f"  port: {port}\n"
        "  store: received/\n"
        "  quarantine: quarantine/\n"
        "  keys: [{key: research.key.pem, cert: research.cert.pem}]\n"
        "  trust: [hospital.cert.pem]\n")
    (tmp_path / "hospital.yaml").write_text(
        "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
        "destinations:\n  research: {orthanc_modality: research}\n"
        "rules:\n  - {send_to: [research], action: protect, recipients: [research.cert.pem], profile: plain}\n")
    log = (tmp_path / "receive.log").open("wb")
    receiver = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "receive", "--config",
                                 str(tmp_path / "research.yaml")], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, receiver)
        with OrthancProcess(tmp_path / "hospital", aet="HOSPITAL", miadmark_config=tmp_path / "hospital.yaml",
                            modalities={"research": ["RESEARCH", "127.0.0.1", port]}) as hospital:
            files = sorted(CT.glob("*.dcm"))[:SLICES]
            for f in files:
                study = hospital.upload(f)["ParentStudy"]
            response = hospital.post("/modalities/research/store", {"Resources": [study], "Synchronous": True})
            assert response.status_code == 200, response.text
        for f in files:
            source = pydicom.dcmread(f)
            stored = tmp_path / "received" / source.StudyInstanceUID / source.SeriesInstanceUID / \
                f"{source.SOPInstanceUID}.dcm"
            assert stored.exists(), (tmp_path / "receive.log").read_text()[-2000:]
            assert _without_group_lengths(pydicom.dcmread(stored)) == _without_group_lengths(source)
    finally:
        receiver.terminate()
        try:
            receiver.wait(timeout=20)
        except subprocess.TimeoutExpired:
            receiver.kill()
        log.close()
