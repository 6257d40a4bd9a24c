"""The adapters' translation of the export step, without servers (seconds): the release honours
`deidentify: basic` and writes the gateway's audit lines; the gateway's Protector protects a CT whose
Modality says SEG and refuses a corrupted SOP Class UID alone, named."""

from __future__ import annotations

import pytest
from bad_inputs import CT, bad_vr_sop_class
from waiting import free_port

from miadmark.audit import read_audit
from miadmark.config import load_config
from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.protect import is_protected

NAME, PATIENT_ID = "DOE^JANE^Q", "MRN-20481632"


def config_file(tmp_path, site_keys, *, deidentify: bool):
    key, cert = site_keys["hospital_paths"]
    path = tmp_path / "site.yaml"
    path.write_text(f"""\
identity: {{key: {key}, cert: {cert}}}
gateway: {{spool: spool/, device: cpu}}
destinations:
  partner: {{ae_title: PARTNER, host: 127.0.0.1, port: 9}}
rules:
  - send_to: [partner]
    action: protect
    recipients: [{site_keys['research_paths'][1]}]
    profile: plain
""" + ("    deidentify: basic\n" if deidentify else ""))
    return path


def identified(index: int):
    ds = read_dicom(CT[index])
    ds.PatientName, ds.PatientID = NAME, PATIENT_ID
    return ds


def test_release_deidentifies_as_the_rule_says_and_audits_each_instance(tmp_path, site_keys):
    pytest.importorskip("dicomweb_client")
    pytest.importorskip("ray")
    from cohort_release.job import ReleaseJob
    from cohort_release.listing import InstanceRef
    from cohort_release.manifest import SENT
    from cohort_release.protector import Protector

    config = config_file(tmp_path, site_keys, deidentify=True)
    key, cert = site_keys["hospital_paths"]
    out = tmp_path / "out"
    job = ReleaseJob(source=f"http://127.0.0.1:{free_port()}/dicom-web", dest=out.as_uri(), dest_name="partner",
                     sign_key=str(key), sign_cert=str(cert), config=str(config), device="cpu",
                     audit=str(tmp_path / "audit.jsonl"))
    worker = Protector(job)
    ct = identified(0)
    ref = InstanceRef(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID))
    outcomes, held = worker.export([(ref, ct)])
    assert outcomes[0]["action"] == "protect" and len(held) == 1
    worker.held[1] = held
    (sent,) = worker.send(1)
    assert sent["state"] == SENT
    (written,) = list(out.rglob("*.dcm"))
    data = written.read_bytes()
    assert NAME.encode() not in data and PATIENT_ID.encode() not in data
    assert str(ct.StudyInstanceUID).encode() not in data  # the study UID is mapped too
    (line,) = read_audit(tmp_path / "audit.jsonl")
    assert line["event"] == "sent" and line["way"] == "release" and line["deidentify"] == "basic"
    assert line["sop_instance_uid"] == str(ct.SOPInstanceUID) and line["sent_sop_instance_uid"] == written.stem
    assert line["lesion_mask"] is False


def test_gateway_protector_protects_modality_seg_and_refuses_a_bad_vr_alone(tmp_path, site_keys):
    from dicom_node.protection import NotProtected, Protected, Protector
    from dicomnet.queue import DeidOptions

    cfg = load_config(config_file(tmp_path, site_keys, deidentify=False))
    ct = identified(1)
    ct.Modality = "SEG"
    src = tmp_path / "modality-seg.dcm"
    src.write_bytes(dataset_to_bytes(ct))
    bad = bad_vr_sop_class(tmp_path / "bad.dcm", CT[2])
    items = [(src, tmp_path / "out-1.dcm"), (bad, tmp_path / "out-2.dcm")]
    protected, refused = Protector(cfg).protect(items, (str(site_keys["research_paths"][1]),), "plain",
                                                destination="partner", deid=DeidOptions())
    assert isinstance(protected, Protected) and protected.path == items[0][1] and protected.note is None
    assert is_protected(read_dicom(protected.path))
    assert isinstance(refused, NotProtected) and not refused.transient
    assert "SOPClassUID (0008,0016)" in refused.reason and not items[1][1].exists()
