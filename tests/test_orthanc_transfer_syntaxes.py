"""Real Orthanc: every transfer syntax in ../shared/data through the plugin (JPEG, JPEG-LS, JPEG 2000, RLE,
native), exported protected to a key-holding Orthanc that strips on ingestion.

The decoders run inside Orthanc's process beside its own DCMTK codecs (CharLS, OpenJPEG): a symbol clash
there kills the hospital's PACS, not one export. Each file arrives as its original dataset, or (the files
that do not decode) fails alone, and the hospital Orthanc is alive after every one."""

from __future__ import annotations

import io

import pydicom
import pytest
from conftest import DICOM_DATA, UNDECODABLE, shared_params
from test_orthanc_export import _without_group_lengths

from orthanc_plugin.testing import OrthancProcess, missing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

# Orthanc's own parser refuses it at upload (DCMTK: Pixel Data of odd length as OW): the plugin never sees it.
ORTHANC_REFUSES = {"JPEGLosslessP14SV1_1s_1f_u_16_16.dcm"}
FILES = shared_params(sorted((DICOM_DATA / "transfer_syntaxes").rglob("*.dcm")))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from miadmark.keys import new_identity

    tmp = tmp_path_factory.mktemp("orthanc-syntaxes")
    new_identity("hospital", tmp)
    new_identity("research", tmp)
    (tmp / "research.yaml").write_text("receiver:\n  quarantine: quarantine/\n"
                                       "  keys: [{key: research.key.pem, cert: research.cert.pem}]\n"
                                       "  trust: [hospital.cert.pem]\n")
    (tmp / "hospital.yaml").write_text("identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
                                       "destinations:\n  research: {orthanc_modality: research}\n"
                                       "rules:\n  - send_to: [research]\n    action: protect\n"
                                       "    recipients: [research.cert.pem]\n    profile: plain\n")
    with OrthancProcess(tmp / "research", aet="RESEARCH", miadmark_config=tmp / "research.yaml") as research:
        with OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                            modalities={"research": research}) as hospital:
            yield hospital, research


@pytest.mark.parametrize("path", FILES, ids=lambda p: p and f"{p.parent.name}/{p.name}")
def test_each_syntax_arrives_as_its_original_or_fails_alone(sites, shared_data, path):
    hospital, research = sites
    source = pydicom.dcmread(path)
    upload = hospital.post("/instances", path.read_bytes())
    if path.name in ORTHANC_REFUSES:
        assert upload.status_code == 400 and hospital.get("/system").status_code == 200, upload.text
        return
    assert upload.status_code == 200, upload.text
    instance = upload.json()["ID"]
    try:
        answer = hospital.post("/modalities/research/store", {"Resources": [instance], "Synchronous": True})
        assert hospital.process.poll() is None, f"{path.name} killed the hospital Orthanc:\n{hospital.log_tail()}"
        assert hospital.get("/system").status_code == 200
        if path.name in UNDECODABLE:
            assert answer.status_code == 500 and answer.json()["FailedInstancesCount"] == 1, answer.text
            return
        assert answer.status_code == 200 and answer.json()["FailedInstancesCount"] == 0, answer.text
        found = [r["ID"] for r in research.post("/tools/lookup", source.SOPInstanceUID).json()
                 if r["Type"] == "Instance"]  # a file may reuse one UID at several levels
        assert len(found) == 1, research.log_tail()
        try:
            stored = pydicom.dcmread(io.BytesIO(research.get(f"/instances/{found[0]}/file").content))
            assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
            assert _without_group_lengths(stored) == _without_group_lengths(source)
        finally:  # the same SOP Instance UID comes again in other syntaxes
            research.delete(f"/instances/{found[0]}")
    finally:
        hospital.delete(f"/instances/{instance}")
