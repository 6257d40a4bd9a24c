"""The receiving side under attack and faults, over real associations (issue 14: findings 1, 2, 7, 9, 10).

A forged plain object never replaces a verified original; a resend is harmless; unknown callers get no
plain store; a PDU header cannot make the listener allocate; connections are bounded; the sender's
explicit transfer syntax is preferred; what is stored is owner-only.
"""

from __future__ import annotations

import socket
import stat
import struct
import time
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.audit import read_audit
from miadmark.config import load_config
from miadmark.dicomio import read_dicom, write_dicom_atomic
from miadmark.keys import load_identity, new_identity
from miadmark.protect import protect

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    for name in ("hospital", "research"):
        new_identity(name, folder)
    hospital = load_identity(folder / "hospital.key.pem", folder / "hospital.cert.pem")
    research = load_identity(folder / "research.key.pem", folder / "research.cert.pem")
    good = protect(read_dicom(CT[0]), recipients=[research.cert], signer=hospital, profile="plain", device="cpu")
    return folder, write_dicom_atomic(good, folder / "good.dcm")


def make_receiver(tmp: Path, keys: Path, extra: str = "allow_calling: [GW]") -> Receiver:
    cfg = tmp / "rx.yaml"
    cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: 0
  store: store/
  quarantine: quarantine/
  {extra}
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
""")
    return Receiver(load_config(cfg)).start()


@pytest.fixture
def receiver(tmp_path, material):
    rx = make_receiver(tmp_path, material[0])
    yield rx
    rx.stop()


def send(rx, *paths, calling="GW"):
    return send_files("127.0.0.1", rx.port, paths, called_ae="RESEARCH", calling_ae=calling)


def stored_path(rx, path) -> Path:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Path(rx.rx.store) / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


# ---------------------------------------------------------------- finding 1: forged overwrite, 7: duplicates

def test_forged_plain_object_never_replaces_a_verified_original(receiver, material, tmp_path):
    assert send(receiver, material[1]) == [0]
    original = stored_path(receiver, CT[0])
    verified = original.read_bytes()
    forged = pydicom.dcmread(CT[0])
    forged.StudyDescription = "FORGED"
    forged_path = tmp_path / "forged.dcm"
    forged.save_as(forged_path)
    assert send(receiver, forged_path) == [0x0110]  # refused: quarantined as a conflict
    assert original.read_bytes() == verified
    reasons = [p.read_text() for p in Path(receiver.rx.quarantine).glob("*.reason.json")]
    assert len(reasons) == 1 and "conflict" in reasons[0] and "FORGED" not in reasons[0]
    assert read_audit(receiver.rx.audit)[-1]["event"] == "conflict"


def test_a_resend_is_an_idempotent_success(receiver, material):
    assert send(receiver, material[1], material[1]) == [0, 0]
    assert send(receiver, material[1]) == [0]
    events = [r["event"] for r in read_audit(receiver.rx.audit)]
    assert events == ["stored", "duplicate", "duplicate"]
    assert len(list(Path(receiver.rx.store).rglob("*.dcm"))) == 1
    assert not list(Path(receiver.rx.quarantine).glob("*.dcm"))


def test_plain_is_refused_by_default_when_any_caller_may_connect(tmp_path, material):
    rx = make_receiver(tmp_path, material[0], extra="")
    try:
        assert send(rx, CT[1], calling="ANYONE") == [0x0110]
        assert send(rx, material[1], calling="ANYONE") == [0]  # protected: verified by its signature
        assert not stored_path(rx, CT[1]).exists()
    finally:
        rx.stop()


def test_unknown_caller_cannot_associate(receiver):
    with pytest.raises(ConnectionError, match="rejected"):
        send(receiver, CT[1], calling="STRANGER")


# ------------------------------------------------------------------------- finding 2: memory, connections

def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_huge_pdu_header_is_refused_before_allocating(receiver):
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30))  # an A-ASSOCIATE-RQ "of 1 GiB"
            sock.sendall(b"\x00" * 1024)
            assert _closed_within(sock, 5.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 64 * 1024 * 1024, f"the listener allocated {peak - before} bytes"


def test_the_gateway_listener_is_bounded_too(tmp_path):
    from dicom_node.gateway import Gateway
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway: {ae_title: GW, bind: 127.0.0.1, port: 0, spool: spool/}\n")
    gw = Gateway(load_config(cfg), forward="none").start(watch=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30))
            assert _closed_within(sock, 5.0)
        peak = tracemalloc.get_traced_memory()[1]
        assert send_files("127.0.0.1", gw.port, [CT[0]], called_ae="GW", calling_ae="PACS") == [0x0124]  # no rule
        queue_files = list((tmp_path / "spool").glob("queue.sqlite*"))  # with its -wal and -shm while open
        assert len(queue_files) >= 2 and {stat.S_IMODE(p.stat().st_mode) for p in queue_files} == {0o600}
    finally:
        tracemalloc.stop()
        gw.stop()
    assert peak - before < 64 * 1024 * 1024
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


def test_a_pdu_over_the_negotiated_maximum_closes_the_association(receiver):
    ae = AE(ae_title="GW")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="RESEARCH")
    assert assoc.is_established and assoc.acceptor.maximum_length == 4 * 1024 * 1024
    sock = assoc.dul.socket.socket
    sock.sendall(struct.pack(">BBL", 0x04, 0, 64 * 1024 * 1024))  # P-DATA-TF "of 64 MiB"
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert send(receiver, CT[1]) == [0]  # the listener still serves others


def test_connections_are_bounded_and_idle_ones_closed(tmp_path, material):
    rx = make_receiver(tmp_path, material[0], extra="allow_calling: [GW]\n  max_associations: 2")
    rx.ae.acse_timeout = 1  # (10 s in service) a connection that never asks for an association
    try:
        idle = [socket.create_connection(("127.0.0.1", rx.port)) for _ in range(2)]
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", rx.port)) as third:
            assert _closed_within(third, 2.0)  # over the cap: closed at accept
        assert all(_closed_within(s, 5.0) for s in idle)  # no association request: closed
        for s in idle:
            s.close()
        deadline = time.monotonic() + 15  # the listener frees the slots once its threads saw the close
        while True:
            try:
                assert send(rx, CT[1]) == [0]
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        rx.stop()


# -------------------------------------------------------------------- finding 9: the sender's encoding

def test_explicit_vr_is_preferred_when_the_sender_proposes_implicit_first(receiver):
    ae = AE(ae_title="GW")
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="RESEARCH")
    try:
        assert assoc.is_established
        assert assoc.accepted_contexts[0].transfer_syntax[0] == ExplicitVRLittleEndian
        ds = pydicom.dcmread(CT[2])
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    stored = pydicom.dcmread(stored_path(receiver, CT[2]))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# -------------------------------------------------------------------------------- finding 10: at rest

def _private(path: Path) -> bool:
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode & 0o077 == 0


def test_store_quarantine_and_audit_are_owner_only(receiver, material, tmp_path):
    bad = pydicom.dcmread(CT[3])
    bad.SOPInstanceUID = "1.2.3/../x"
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path)
    assert send(receiver, material[1], bad_path) == [0, 0x0110]
    paths = [*Path(receiver.rx.store).rglob("*"), *Path(receiver.rx.quarantine).rglob("*"), receiver.rx.audit,
             Path(receiver.rx.store), Path(receiver.rx.quarantine)]
    assert len(paths) >= 8
    assert [p for p in paths if not _private(p)] == []


@pytest.mark.slow
def test_garbage_pdus_leave_the_listener_serving(receiver):
    """100 seeded hostile connections: random PDU types, declared lengths up to 4 GiB, random bodies."""
    import random
    rng = random.Random(14)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(100):
            length = rng.choice([0, 1, 68, rng.randrange(1 << 16), rng.randrange(1 << 32)])
            body = rng.randbytes(min(length, rng.randrange(2048)))
            with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
                try:
                    sock.sendall(struct.pack(">BBL", rng.randrange(0, 9), 0, length) + body)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the node closed it first
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 64 * 1024 * 1024
    end = time.monotonic() + 60  # hostile connections end (closed by them, or after acse_timeout 10 s)
    while receiver._server.active_associations and time.monotonic() < end:
        time.sleep(0.1)
    assert not receiver._server.active_associations
    assert send(receiver, CT[1]) == [0]
