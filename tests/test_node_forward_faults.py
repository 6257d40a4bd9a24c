"""The gateway's forwarding under faults, over real associations (issue 14: findings 3, 5, 8, and
STOW-RS 202 in both adapters).

Full disk while protecting: retried, never quarantined; a spooled original leaves the spool only once
delivered or safely in quarantine; a permanent refusal is not retried; one bad image in a batch fails
alone; a STOW-RS 202 fails only the instances its body names, in the gateway and the Orthanc plugin.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.audit import read_audit
from miadmark.config import load_config
from miadmark.keys import new_identity
from waiting import wait_for

pytestmark = pytest.mark.slow  # a gateway, its forwarder and a receiving node per test (~10 s each)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("hospital", "research"):
        new_identity(name, folder)
    return folder


@pytest.fixture
def site(tmp_path, keys):
    """A gateway (forwarding in threads) and a receiving node; rules: PROTECT -> protect, ARCHIVE -> pass."""
    rx_cfg = tmp_path / "rx.yaml"
    rx_cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: 0
  store: received/
  quarantine: rx-quarantine/
  allow_calling: [GW]
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
""")
    rx = Receiver(load_config(rx_cfg)).start()
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  spool: spool/
  device: cpu
  study_settle_s: 0.5
  retry: {{base_s: 0.05, max_s: 0.2, max_attempts: 1000}}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx.port}}}
rules:
  - when: {{called_ae: PROTECT}}
    send_to: [research]
    action: protect
    profile: plain
    recipients: [{keys}/research.cert.pem]
  - when: {{called_ae: ARCHIVE}}
    send_to: [research]
    action: pass
  - action: block
""")
    gateways = []

    def start():
        gw = Gateway(load_config(cfg_path)).start(watch=False)
        gateways.append(gw)
        return gw

    yield start, rx, load_config(cfg_path)
    for gw in gateways:
        gw.stop()
    rx.stop()


def received(rx) -> list[Path]:
    return sorted(Path(rx.rx.store).rglob("*.dcm"))


def job_states(gw) -> dict:
    return gw.queue.counts().get("research", {})


def fail_writes_in(folder_name: str, monkeypatch) -> threading.Event:
    """Every durable write into a folder named folder_name fails with ENOSPC while the event is set
    (write_atomic's temp file is where a full disk shows first)."""
    full = threading.Event()
    full.set()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if full.is_set() and Path(str(kwargs.get("dir", ""))).name == folder_name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return full


def bad_image(tmp_path: Path) -> Path:
    """A CT slice whose Pixel Representation is empty: its pixels cannot be interpreted."""
    ds = pydicom.dcmread(CT[5])
    ds.PixelRepresentation = None
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    return path


# ------------------------------------------------------------------------------ finding 3: full disk

def test_full_disk_while_protecting_is_retried_not_quarantined(site, monkeypatch):
    start, rx, cfg = site
    full = fail_writes_in("protected", monkeypatch)
    gw = start()
    assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="PROTECT", calling_ae="PACS") == [0, 0, 0]
    assert wait_for(lambda: any(r["event"] == "protect_deferred" for r in read_audit(cfg.gateway.audit)), 90)
    assert job_states(gw).get("quarantined", 0) == 0 and received(rx) == []
    full.clear()  # space again
    assert wait_for(lambda: len(received(rx)) == 3, 30)
    assert job_states(gw).get("quarantined", 0) == 0
    assert not list(Path(cfg.gateway.quarantine).glob("*.dcm")) if Path(cfg.gateway.quarantine).exists() else True


def test_spooled_original_stays_until_it_is_safely_in_quarantine(site, monkeypatch, tmp_path):
    start, rx, cfg = site
    full = fail_writes_in("quarantine", monkeypatch)
    gw = start()
    assert send_files("127.0.0.1", gw.port, [bad_image(tmp_path)], called_ae="PROTECT", calling_ae="PACS") == [0]
    assert wait_for(lambda: any(r["event"] == "protect_deferred" for r in read_audit(cfg.gateway.audit)), 90)
    assert len(list(gw.spool.objects.glob("*.dcm"))) == 1  # kept: the quarantine could not take it
    assert job_states(gw).get("quarantined", 0) == 0
    full.clear()
    assert wait_for(lambda: job_states(gw).get("quarantined", 0) == 1, 20)
    assert len(list(Path(cfg.gateway.quarantine).glob("*.dcm"))) == 1
    assert wait_for(lambda: not list(gw.spool.objects.glob("*.dcm")), 5)  # released once quarantined


# ------------------------------------------------------------------ finding 5: one bad image fails alone

def test_one_bad_image_in_a_batch_fails_alone(site, tmp_path):
    start, rx, cfg = site
    gw = start()
    files = [*CT[:5], bad_image(tmp_path)]
    assert send_files("127.0.0.1", gw.port, files, called_ae="PROTECT", calling_ae="PACS") == [0] * 6
    assert wait_for(lambda: job_states(gw).get("done", 0) + job_states(gw).get("quarantined", 0) == 6, 60)
    assert job_states(gw).get("done") == 5 and job_states(gw).get("quarantined") == 1
    assert len(received(rx)) == 5


# ----------------------------------------------------------- finding 8: permanent failures are not retried

def test_a_permanent_refusal_is_not_retried(site, tmp_path):
    start, rx, cfg = site
    ds = pydicom.dcmread(CT[6])
    ds.SOPInstanceUID = "1.2.3/../../etc"  # the receiving node refuses it: not a usable UID
    path = tmp_path / "slash.dcm"
    ds.save_as(path)
    gw = start()
    assert send_files("127.0.0.1", gw.port, [path], called_ae="ARCHIVE", calling_ae="PACS") == [0]
    assert wait_for(lambda: job_states(gw).get("dead", 0) == 1, 20)
    time.sleep(1.0)  # retries, if any, would come every 0.05-0.2 s
    failed = [r for r in read_audit(cfg.gateway.audit) if r["event"] == "send_failed"]
    assert len(failed) == 1 and "0x0110" in failed[0]["error"]
    assert failed[0]["error"].endswith(": malformed UIDs")  # the receiving node's Error Comment, no value
    assert len(list(Path(rx.rx.quarantine).glob("*.dcm"))) == 1


def test_the_receiving_nodes_reason_reaches_dead_letter_status_page_and_queue_status(site, tmp_path):
    """The research node quarantines a resend with other content as a conflict: its Error Comment says
    so (no value), and the hospital sees `conflict` with the dead letter, on the status page and in
    `miadmark queue status`."""
    from dicom_node.monitoring.statuspage import render
    start, rx, cfg = site
    gw = start()
    assert send_files("127.0.0.1", gw.port, [CT[0]], called_ae="ARCHIVE", calling_ae="PACS") == [0]
    assert wait_for(lambda: job_states(gw).get("done", 0) == 1, 30)
    forged = pydicom.dcmread(CT[0])
    forged.StudyDescription = "FORGED"
    forged_path = tmp_path / "forged.dcm"
    forged.save_as(forged_path)
    assert send_files("127.0.0.1", gw.port, [forged_path], called_ae="ARCHIVE", calling_ae="PACS") == [0]
    assert wait_for(lambda: job_states(gw).get("dead", 0) == 1, 30)
    dead = [r for r in read_audit(cfg.gateway.audit) if r["event"] == "dead_letter"]
    assert len(dead) == 1 and dead[0]["error"] == "status 0x0110 (refused: not retried): conflict"
    assert [r["last_error"] for r in gw.queue.status()] == [dead[0]["error"]]
    page = render(title="gateway", ready=True, checks={}, queue_path=gw.queue.path, audit_path=cfg.gateway.audit)
    # the queue's last error, and the send_failed and dead_letter rows of the failures table
    assert page.count("refused: not retried): conflict") == 3
    out = subprocess.run([sys.executable, "-m", "miadmark.cli", "queue", "status", "--config", str(cfg.path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("research"))
    assert out.returncode == 0 and line.endswith("status 0x0110 (refused: not retried): conflict"), out.stdout
    assert "FORGED" not in cfg.gateway.audit.read_text() + out.stdout + page


# ------------------------------------------------------------ STOW-RS 202: the same answer in both adapters

class _Stow202(BaseHTTPRequestHandler):
    refused: str = ""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [self.refused]},
                                                    "00081197": {"vr": "US", "Value": [0xC000]}}]}}
        data = json.dumps(body).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stow_202():
    refused = str(pydicom.dcmread(CT[1], stop_before_pixels=True).SOPInstanceUID)
    handler = type("Handler", (_Stow202,), {"refused": refused})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", refused
    server.shutdown()


def test_stow_202_is_a_partial_success_in_both_adapters(stow_202):
    from dicom_node.forwarder import Outgoing
    from dicom_node.transports import send_stow
    from miadmark.config import parse_config
    from orthanc_plugin.senders import StowSender
    from orthanc_plugin.stow import StowServer

    base, refused = stow_202
    dest = parse_config(f"destinations:\n  web: {{stow_url: '{base}/studies'}}\n").destinations["web"]
    items = [Outgoing(None, p, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), "", "") for p in CT[:3]]
    gateway = send_stow(dest, items)
    assert [o.ok for o in gateway] == [True, False, True] and gateway[1].permanent

    sender = StowSender(StowServer("web", base))
    plugin = sender.send([(f"orig{i}", pydicom.dcmread(p)) for i, p in enumerate(CT[:3])])
    assert [o.ok for o in plugin] == [True, False, True] and plugin[1].permanent and "orig1" in plugin[1].error


# --------------------------------------------------------------------- finding 4: a poison image

POISON_SOURCE = DATA / "transfer_syntaxes" / "JPEGBaseline" / "SC_rgb_dcmtk_+eb+cy+np.dcm"


def test_an_image_that_aborts_the_decoder_is_quarantined_and_the_rest_delivered(site, tmp_path):
    """BitsAllocated 32 on a JPEG image made gdcm abort() the process that decoded it."""
    start, rx, cfg = site
    ds = pydicom.dcmread(POISON_SOURCE)
    ds.BitsAllocated = 32
    poison = tmp_path / "poison.dcm"
    ds.save_as(poison)
    gw = start()
    assert send_files("127.0.0.1", gw.port, [poison, CT[0]], called_ae="PROTECT", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: job_states(gw).get("done", 0) == 1 and job_states(gw).get("quarantined", 0) == 1, 90)
    assert len(received(rx)) == 1
    reasons = [p.read_text() for p in Path(cfg.gateway.quarantine).glob("*.reason.json")]
    # the core now names the bad header before any decoder runs (miadmark.limits); were a decoder to
    # crash on an image that passes those checks, the worker's crash count quarantines it instead
    assert len(reasons) == 1
    assert "BitsAllocated 32 is not valid" in reasons[0] or ("crashed 2 times" in reasons[0]
                                                             and "SIGABRT" in reasons[0])


def test_a_destination_that_is_down_is_retried_by_every_association_worker(tmp_path, site_keys):
    """Two association workers (the default) to a destination that refuses connections: each try is counted
    against every waiting instance and retried, and once the destination is up they all arrive. (Two workers
    failing to connect must not keep each other the 'extra' association, where a failure counts nothing.)"""
    from test_ops_metrics import CT, site_yaml
    from waiting import free_port

    rx_port = free_port()
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=rx_port, gw_metrics=0, rx_metrics=0)
    assert "associations" not in cfg_path.read_text()  # the default: 2
    gw = Gateway(load_config(cfg_path)).start()
    rx = None
    try:
        assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
        assert wait_for(lambda: gw.queue.retries().get("research", (0, 0))[0] == 3, timeout=60), gw.queue.retries()
        assert wait_for(lambda: gw.queue.retries()["research"][1] >= 6, timeout=60), gw.queue.retries()  # retried
        rx = Receiver(load_config(cfg_path)).start()
        assert wait_for(lambda: gw.queue.counts()["research"]["done"] == 3, timeout=60), gw.queue.counts()
    finally:
        gw.stop()
        if rx is not None:
            rx.stop()
