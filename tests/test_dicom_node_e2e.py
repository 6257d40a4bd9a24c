"""End to end on loopback: `miadmark gateway` as a subprocess, real associations, the 96-slice CT.

  protect: the key holder's receiver stores every original exactly; a second destination
           without a key gets protected objects (pixels differ, encrypted record attached)
  block:   nothing is sent
  SIGKILL: the gateway killed mid-transfer and restarted delivers everything
  down:    a destination that is down at first gets everything once it comes up
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import evt

from miadmark.audit import read_audit
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from dicomnet.listener import storage_scp_ae
from miadmark.config import load_config
from miadmark.dicomio import dataset_to_bytes
from miadmark.keys import new_identity
from waiting import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
CT = sorted((REPO.parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data").glob("*.dcm"))

pytestmark = pytest.mark.slow


def without_group_length(ds) -> dict:
    return {e.tag: e.value for e in ds if e.tag.element != 0}


def dataset_part(raw: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return raw[132 + 12 + ds.file_meta.FileMetaInformationGroupLength:]


class Collector:
    """A plain storage SCP that keeps what it receives, as received (a destination with no key)."""

    def __init__(self, folder: Path, ae_title: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ae = storage_scp_ae(ae_title)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.handle)])
        self.port = self.server.server_address[1]

    def handle(self, event):
        (self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0

    def files(self):
        return sorted(self.folder.glob("*.dcm"))

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    new_identity("hospital", folder)
    new_identity("research", folder)
    return folder


@pytest.fixture
def site(tmp_path, keys):
    gw_port, rx_port = free_port(), free_port()
    partner = Collector(tmp_path / "partner", "PARTNER")
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  bind: 127.0.0.1
  port: {gw_port}
  allow_calling: [PACS]
  spool: spool/
  device: cpu
  batch_size: 16
  retry: {{base_s: 0.1, max_s: 1.0, max_attempts: 1000}}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
  partner:  {{ae_title: PARTNER, host: 127.0.0.1, port: {partner.port}}}
  archive:  {{ae_title: ARCHIVE, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research, partner]
    action: protect
    recipients: [{keys}/research.cert.pem]
    profile: plain
  - when: {{called_ae: ARCHIVE}}
    send_to: [archive]
    action: pass
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: quarantine/
  allow_calling: [MIADMARK]
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
""")
    procs: list[subprocess.Popen] = []
    receivers: list[Receiver] = []

    def start_gateway() -> subprocess.Popen:
        log = open(tmp_path / "gateway.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "gateway", "--config", str(cfg_path)],
                                cwd=tmp_path, stdout=log, stderr=log)
        procs.append(proc)

        def listening():
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", gw_port)) == 0
        assert wait_for(listening, timeout=60)
        return proc

    def start_receiver() -> Receiver:
        rx = Receiver(load_config(cfg_path)).start()
        receivers.append(rx)
        return rx

    cfg = load_config(cfg_path)
    yield cfg, gw_port, start_gateway, start_receiver, partner, tmp_path
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for rx in receivers:
        rx.stop()
    partner.stop()


def stored(cfg) -> dict[str, Path]:
    return {p.stem: p for p in cfg.receiver.store.rglob("*.dcm")} if cfg.receiver.store.exists() else {}


def check_exact(cfg, sources):
    out = stored(cfg)
    for src in sources:
        ds = pydicom.dcmread(src)
        path = cfg.receiver.store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert path == out[ds.SOPInstanceUID]
        got = pydicom.dcmread(path)
        assert without_group_length(got) == without_group_length(ds), src.name
        # bytes: the stored file equals the source as encoded in its own transfer syntax
        assert dataset_part(path.read_bytes()) in (dataset_part(src.read_bytes()), dataset_part(dataset_to_bytes(ds)))


def test_protect_route_ct_series(site):
    cfg, gw_port, start_gateway, start_receiver, partner, tmp = site
    start_receiver()
    start_gateway()
    assert len(CT) == 96
    t0 = time.monotonic()
    assert send_files("127.0.0.1", gw_port, CT, called_ae="RESEARCH", calling_ae="PACS") == [0] * 96
    assert wait_for(lambda: len(stored(cfg)) == 96 and len(partner.files()) == 96, timeout=400), \
        (len(stored(cfg)), len(partner.files()), (tmp / "gateway.log").read_text()[-3000:])
    print(f"96 CT slices protected, sent to two destinations, stripped and stored in {time.monotonic() - t0:.1f} s")
    check_exact(cfg, CT)
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in CT}
    # pixels differ from the originals (matched by slice position)
    by_pos = {str(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient): p for p in CT}
    for path in partner.files():
        ds = pydicom.dcmread(path)
        assert "EncryptedAttributesSequence" in ds and "DERIVED" in ds.ImageType
        assert ds.SOPInstanceUID not in source_uids
        orig = pydicom.dcmread(by_pos[str(ds.ImagePositionPatient)])
        assert not np.array_equal(ds.pixel_array, orig.pixel_array), path.name
    # the gateway records a delivery after the destination's answer: wait for the last records
    assert wait_for(lambda: cfg.gateway.audit.read_bytes().count(b'"event":"sent"') == 192, timeout=60)
    assert wait_for(lambda: "sent (protect, rule 1)" in (tmp / "gateway.log").read_text(), timeout=30)
    audit = read_audit(cfg.gateway.audit)
    sent = [r for r in audit if r["event"] == "sent"]
    assert len(sent) == 192 and {r["destination"] for r in sent} == {"research", "partner"}
    assert sent[0]["recipients"] == ["research"] and sent[0]["action"] == "protect"
    assert "sent (protect, rule 1)" in (tmp / "gateway.log").read_text()
    assert not (cfg.receiver.quarantine.exists() and any(cfg.receiver.quarantine.iterdir()))


def test_block_sends_nothing_and_sighup_reload(site):
    cfg, gw_port, start_gateway, start_receiver, partner, tmp = site
    start_receiver()
    proc = start_gateway()
    assert send_files("127.0.0.1", gw_port, CT[:10], called_ae="ELSEWHERE", calling_ae="PACS") == [0x0124] * 10
    time.sleep(1.0)
    assert stored(cfg) == {} and partner.files() == []
    # SIGHUP with a bad file: refused with the line and reason, the running rules stay
    text = cfg.path.read_text()
    cfg.path.write_text(text.replace("action: block", "action: blok"))
    proc.send_signal(signal.SIGHUP)
    log = tmp / "gateway.log"
    assert wait_for(lambda: "reload (SIGHUP) refused, keeping the running rules" in log.read_text(), timeout=20)
    assert "site.yaml:24: rules[2].action" in log.read_text()
    assert send_files("127.0.0.1", gw_port, CT[:2], called_ae="ELSEWHERE", calling_ae="PACS") == [0x0124] * 2
    # a good file on SIGHUP: ELSEWHERE now passes to the archive
    cfg.path.write_text(text.replace("called_ae: ARCHIVE", "called_ae: ELSEWHERE"))
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration reloaded (SIGHUP)" in log.read_text(), timeout=20)
    assert send_files("127.0.0.1", gw_port, CT[:2], called_ae="ELSEWHERE", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: len(stored(cfg)) == 2, timeout=60)


def test_sigkill_mid_transfer_then_restart_delivers_all(site):
    """The gateway is killed while a modality's association is open and forwarding is under way, at a point
    the test chooses (after KILL_AFTER acknowledged instances), not one a race on a loaded machine picks."""
    from pynetdicom import AE

    cfg, gw_port, start_gateway, start_receiver, partner, tmp = site
    start_receiver()
    proc = start_gateway()
    kill_after = 40
    meta = pydicom.dcmread(CT[0], stop_before_pixels=True).file_meta
    ae = AE(ae_title="PACS")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", gw_port, ae_title="ARCHIVE")
    assert assoc.is_established
    acked = [getattr(assoc.send_c_store(p), "Status", None) for p in CT[:kill_after]]
    assert acked == [0] * kill_after
    # forwarding has begun (or is about to): kill the whole gateway with the modality's association open
    assert wait_for(lambda: len(stored(cfg)) >= 1, timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    try:
        cut = getattr(assoc.send_c_store(CT[kill_after]), "Status", None)
    except RuntimeError:  # pynetdicom saw the association go first
        cut = None
    assert cut is None  # nothing acknowledged after the kill
    if assoc.is_established:
        assoc.abort()
    start_gateway()
    # the sender (a PACS) retries what was not acknowledged; the gateway owes the rest
    rest = CT[kill_after:]
    assert send_files("127.0.0.1", gw_port, rest, called_ae="ARCHIVE", calling_ae="PACS") == [0] * len(rest)
    assert wait_for(lambda: len(stored(cfg)) == 96, timeout=300), len(stored(cfg))
    check_exact(cfg, CT)


def test_destination_down_then_up(site):
    cfg, gw_port, start_gateway, start_receiver, partner, tmp = site
    start_gateway()
    assert send_files("127.0.0.1", gw_port, CT[:20], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 20
    time.sleep(1.5)
    assert stored(cfg) == {}
    start_receiver()
    assert wait_for(lambda: len(stored(cfg)) == 20, timeout=120)
    check_exact(cfg, CT[:20])
