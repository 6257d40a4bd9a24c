"""Receiving node on loopback: strips with its keys, stores originals, quarantines what it cannot open
and answers every failure with the same generic status."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pydicom
import pytest

from miadmark.audit import read_audit
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from dicom_node.transport import PROCESSING_FAILURE
from miadmark.config import load_config
from miadmark.dicomio import read_dicom, write_dicom_atomic
from miadmark.keys import load_identity, new_identity
from miadmark.protect import protect
from waiting import free_port

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """Keys and a few protected slices: for research (trusted signer), and signed by a stranger."""
    folder = tmp_path_factory.mktemp("rx-keys")
    for name in ("hospital", "research", "stranger"):
        new_identity(name, folder)
    ident = {n: load_identity(folder / f"{n}.key.pem", folder / f"{n}.cert.pem")
             for n in ("hospital", "research", "stranger")}
    out = {}
    originals = [read_dicom(p) for p in CT[:2]]
    out["good"] = protect(originals[0], recipients=[ident["research"].cert], signer=ident["hospital"], profile="plain",
                          device="cpu")
    out["stranger"] = protect(originals[1], recipients=[ident["research"].cert], signer=ident["stranger"],
                              profile="plain", device="cpu")
    out["for_hospital"] = protect(originals[1], recipients=[ident["hospital"].cert], signer=ident["hospital"],
                                  profile="plain", device="cpu")
    tampered = copy.deepcopy(out["good"])
    item = tampered.EncryptedAttributesSequence[0]
    content = bytearray(item.EncryptedContent)
    content[len(content) // 2] ^= 0xFF
    item.EncryptedContent = bytes(content)
    out["tampered"] = tampered
    files = {}
    for name, ds in out.items():
        files[name] = write_dicom_atomic(ds, folder / f"{name}.dcm")
    return folder, files


def make_receiver(tmp: Path, keys: Path, plain: str = "store") -> Receiver:
    cfg = tmp / "rx.yaml"
    cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {free_port()}
  store: store/
  quarantine: quarantine/
  plain: {plain}
  allow_calling: [GW]
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
""")
    return Receiver(load_config(cfg)).start()


@pytest.fixture
def receiver(tmp_path, material):
    rx = make_receiver(tmp_path, material[0])
    yield rx
    rx.stop()


def send(rx, *paths):
    return send_files("127.0.0.1", rx.port, paths, called_ae="RESEARCH", calling_ae="GW")


def test_protected_instance_is_stripped_and_stored_exactly(receiver, material):
    assert send(receiver, material[1]["good"]) == [0]
    src = pydicom.dcmread(CT[0])
    out = Path(receiver.rx.store) / src.StudyInstanceUID / src.SeriesInstanceUID / f"{src.SOPInstanceUID}.dcm"
    assert {e.tag: e.value for e in pydicom.dcmread(out) if e.tag.element} == \
        {e.tag: e.value for e in src if e.tag.element}
    # bytes: the original file as protect read it, byte for byte (group lengths and padding included)
    assert out.read_bytes() == Path(CT[0]).read_bytes()
    record = read_audit(receiver.rx.audit)[-1]
    assert record["event"] == "stored" and record["stripped"] is True and record["calling_ae"] == "GW"


def test_plain_instance_stored_as_received(receiver):
    assert send(receiver, CT[1]) == [0]
    src = pydicom.dcmread(CT[1])
    out = Path(receiver.rx.store) / src.StudyInstanceUID / src.SeriesInstanceUID / f"{src.SOPInstanceUID}.dcm"
    stored = pydicom.dcmread(out)
    assert {e.tag: e.value for e in stored} == {e.tag: e.value for e in src}


@pytest.mark.parametrize("name, error", [
    ("stranger", "UntrustedSignerError"),
    ("for_hospital", "NoRecipientKeyError"),
    ("tampered", "Error"),
])
def test_unopenable_is_quarantined_with_one_generic_status(receiver, material, name, error):
    assert send(receiver, material[1][name]) == [PROCESSING_FAILURE]
    quarantine = Path(receiver.rx.quarantine)
    reasons = list(quarantine.glob("*.reason.json"))
    assert len(reasons) == 1
    info = json.loads(reasons[0].read_text())
    assert error in info["reason"] and info["calling_ae"] == "GW"
    kept = reasons[0].with_name(reasons[0].name.replace(".reason.json", ".dcm"))
    assert "EncryptedAttributesSequence" in pydicom.dcmread(kept)  # never dropped
    assert not any(Path(receiver.rx.store).rglob("*.dcm")) if Path(receiver.rx.store).exists() else True


def test_plain_refused_when_configured(tmp_path, material):
    rx = make_receiver(tmp_path, material[0], plain="refuse")
    try:
        assert send(rx, CT[2]) == [PROCESSING_FAILURE]
        info = json.loads(next(Path(rx.rx.quarantine).glob("*.reason.json")).read_text())
        assert "plain" in info["reason"]
    finally:
        rx.stop()


def test_malformed_uid_is_quarantined(receiver, tmp_path):
    ds = pydicom.dcmread(CT[3])
    ds.StudyInstanceUID = "1.2.3/../../etc"
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    assert send(receiver, bad) == [PROCESSING_FAILURE]
    assert "UID" in next(Path(receiver.rx.quarantine).glob("*.reason.json")).read_text()


def test_calling_ae_allowlist(receiver):
    with pytest.raises(ConnectionError):
        send_files("127.0.0.1", receiver.port, [CT[0]], called_ae="RESEARCH", calling_ae="ANYONE")
