"""Orthanc plugin parts that run without Orthanc: request bodies, STOW-RS encoding, the receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from miadmark.config import parse_config
from orthanc_plugin.bodies import BadRequest, parse_export_body, parse_protect_body
from orthanc_plugin.receiver import DISCARD, KEEP, Receiver, might_be_protected
from orthanc_plugin.stow import StowServer, multipart

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def test_export_bodies_in_every_form_orthanc_accepts():
    assert parse_export_body(b"abc-123").resources == ("abc-123",)
    assert parse_export_body(b'"abc"').resources == ("abc",)
    req = parse_export_body(b'["a", "b"]')
    assert req.resources == ("a", "b") and req.synchronous
    req = parse_export_body(json.dumps({"Resources": ["a"], "Asynchronous": True, "LocalAet": "X"}))
    assert not req.synchronous and req.options == {"LocalAet": "X"}
    assert not parse_export_body(b'{"Resources": ["a"], "Synchronous": false}').synchronous
    core = json.loads(req.core_body(["a"]))
    assert core == {"LocalAet": "X", "Resources": ["a"], "Synchronous": True}
    for bad in (b"", b"{}", b'{"Resources": []}', b"[1]", b'"../x"'):
        with pytest.raises(BadRequest):
            parse_export_body(bad)


def test_protect_body():
    assert parse_protect_body(b'{"Study": "s", "Destination": "research"}') == ("s", "research", False)
    with pytest.raises(BadRequest):
        parse_protect_body(b'{"Study": "s"}')


def test_stow_multipart_and_server_forms():
    body, content_type = multipart([b"DICM1", b"DICM2"])
    boundary = content_type.split("boundary=")[1]
    assert content_type.startswith('multipart/related; type="application/dicom"')
    assert body.count(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()) == 2
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert StowServer.from_orthanc("a", ["http://h/dw/", "u", "p"]).password == "p"
    server = StowServer.from_orthanc("b", {"Url": "http://h/dw/", "HttpHeaders": {"X": "1"}})
    assert server.url == "http://h/dw/" and server.headers == {"X": "1"} and server.username is None


@pytest.fixture
def receiver(tmp_path):
    from miadmark.keys import new_identity

    new_identity("research", tmp_path)
    cfg = parse_config("receiver:\n  quarantine: q/\n  keys: [{key: research.key.pem, cert: research.cert.pem}]\n",
                       base=tmp_path)
    return Receiver(cfg.receiver)


def test_receiver_keeps_plain_and_quarantines_what_it_cannot_read(receiver, tmp_path):
    plain = sorted(CT.glob("*.dcm"))[0].read_bytes()
    assert not might_be_protected(plain)
    assert receiver.process(plain) == (KEEP, None)
    garbage = b"\x00" * 200 + b"\x00\x04\x00\x05" + b"junk"  # looks like it may hold a record
    assert receiver.process(garbage, "test") == (DISCARD, None)
    reasons = list((tmp_path / "q").glob("*.reason.json"))
    assert len(reasons) == 1 and "DICOM" in json.loads(reasons[0].read_text())["reason"]
    assert receiver.counts == {"stripped": 0, "plain": 1, "quarantined": 1, "refused": 0}


def test_receiver_without_its_keys_quarantines_protected_instances(tmp_path):
    from miadmark.keys import new_identity

    new_identity("research", tmp_path)
    (tmp_path / "research.key.pem").write_text("not a key")
    cfg = parse_config("receiver:\n  quarantine: q/\n  keys: [{key: research.key.pem, cert: research.cert.pem}]\n",
                       base=tmp_path)
    receiver = Receiver(cfg.receiver)
    assert receiver.error and "research.key.pem" in receiver.error
    plain = sorted(CT.glob("*.dcm"))[0].read_bytes()
    assert receiver.process(plain) == (KEEP, None)  # plain instances are unaffected


def test_receiver_can_refuse_plain_instances(tmp_path):
    cfg = parse_config("receiver:\n  quarantine: q/\n  plain: refuse\n", base=tmp_path)
    receiver = Receiver(cfg.receiver)
    assert receiver.process(sorted(CT.glob("*.dcm"))[0].read_bytes()) == (DISCARD, None)
    assert receiver.counts["refused"] == 1


def test_dimse_sender_counts_every_instance_when_the_association_drops():
    from types import SimpleNamespace

    from orthanc_plugin.senders import DimseSender

    class Assoc:
        is_established = True
        calls = 0

        def send_c_store(self, ds):
            Assoc.calls += 1
            if Assoc.calls == 2:
                self.is_established = False
                return SimpleNamespace()  # no response: aborted
            return SimpleNamespace(Status=0x0000)

    sender = DimseSender(called_ae="X", host="127.0.0.1", port=1, calling_ae="Y", sop_classes=set())
    sender.assoc = Assoc()
    outcomes = sender.send([(f"uid{i}", object()) for i in range(4)])
    failures = [o.error for o in outcomes if not o.ok]
    assert [o.ok for o in outcomes] == [True, False, False, False] and not any(o.permanent for o in outcomes)
    assert "no response" in failures[0] and "lost" in failures[2]
