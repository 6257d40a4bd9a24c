"""Destinations as they really are (issue 24, items 1 and 2), with dcmtk as the modality and as the keyless
vendor, the default profile, and real associations throughout.

- dcmtk storescp takes one association at a time: the gateway's second association (associations: 2 by
  default) never holds an instance while it waits, and a refused or timed-out one lowers the destination's
  associations; every slice arrives on the first try, with no timeout and no retry.
- 96 CT slices from storescu reach a research receiving node through `miadmark gateway` (the service's two
  processes) with no association timeout, no retry, and each instance protected exactly once.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_node.gateway import Gateway
from miadmark.audit import read_audit
from miadmark.config import load_config
from waiting import free_port, wait_for

pytestmark = pytest.mark.slow  # real dcmtk processes and the default (generator) watermark
REPO = Path(__file__).resolve().parents[1]

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))
FAILURE_EVENTS = ("send_failed", "dead_letter", "protect_deferred", "quarantined")


def storescu(port: int, files: list[Path], called: str) -> subprocess.CompletedProcess:
    """dcmtk storescu as the modality: every file over one association."""
    return subprocess.run(["storescu", "-aet", "PACS", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gateway_yaml(tmp: Path, keys: Path, destinations: str, *, extra: str = "") -> Path:
    """The README's gateway config: no profile line (the default, `auto`), the default associations."""
    path = tmp / "site.yaml"
    path.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  bind: 127.0.0.1
  port: 0
  allow_calling: [PACS]
  spool: spool/
  device: cpu
{extra}destinations:
{destinations}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [{keys}/research.cert.pem]
  - action: block
""")
    return path


@pytest.fixture
def keys(site_keys) -> Path:
    return site_keys["hospital_paths"][0].parent


def test_storescp_one_association_at_a_time_gets_every_slice_first_try(tmp_path, keys, caplog):
    scp_port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    scp_log = open(tmp_path / "storescp.log", "w")
    scp = subprocess.Popen(["storescp", "-aet", "VENDOR", "-od", str(out), str(scp_port)],
                           stdout=scp_log, stderr=subprocess.STDOUT)
    gw = None
    try:
        assert wait_for(lambda: listening(scp_port), timeout=30)
        # a 5 s ACSE timeout: a second association that waited for the first would show within the test
        cfg = load_config(gateway_yaml(tmp_path, keys, f"  research: {{ae_title: VENDOR, host: 127.0.0.1, "
                                                       f"port: {scp_port}, timeout_s: 5}}"))
        assert cfg.destinations["research"].associations == 2  # the default: storescp takes one
        gw = Gateway(cfg).start(watch=False)
        caplog.set_level("INFO")
        sent = storescu(gw.port, CT[:10], "RESEARCH")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert wait_for(lambda: gw.queue.counts().get("research", {}).get("done") == 10, timeout=300), \
            (gw.queue.status(), (tmp_path / "storescp.log").read_text()[-2000:])
        assert len(list(out.iterdir())) == 10
        rows = gw.queue._con().execute("SELECT attempts, last_error FROM jobs").fetchall()
        assert [tuple(r) for r in rows] == [(0, None)] * 10  # every slice on its first try
        audit = read_audit(cfg.gateway.audit)
        assert [r for r in audit if r["event"] in FAILURE_EVENTS] == []
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "unreachable" not in text and "will retry" not in text and "association lost" not in text
    finally:
        if gw is not None:
            gw.stop()
        scp.send_signal(signal.SIGTERM)
        scp.wait(30)


def test_a_refused_second_association_lowers_the_destinations_associations(tmp_path, keys, caplog):
    """A destination that rejects a second association (pynetdicom's local limit, as many archives do):
    the gateway goes on over one association at once, and no instance waits or fails for it."""
    from pynetdicom import evt

    from dicomnet.listener import storage_scp_ae
    arrived = []
    scp = storage_scp_ae("VENDOR")
    scp.maximum_associations = 1
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda e: arrived.append(e.request.AffectedSOPInstanceUID)
                                             or 0)])
    cfg = load_config(gateway_yaml(tmp_path, keys, f"  research: {{ae_title: VENDOR, host: 127.0.0.1, "
                                                   f"port: {server.server_address[1]}}}"))
    gw = Gateway(cfg).start(watch=False)
    caplog.set_level("INFO")
    try:
        fwd_ready = wait_for(lambda: "research" in gw.forwarders, timeout=30)
        assert fwd_ready
        fwd = gw.forwarders["research"]
        # hold the destination's one association the way a long transfer does, then let the gateway try
        assert fwd._take_slot(2) == 1
        from dicomnet.dimse import open_association, release, scu_ae
        held = open_association(scu_ae("OTHER", [(pydicom.dcmread(CT[0], stop_before_pixels=True).SOPClassUID,
                                                  "1.2.840.10008.1.2.1")]), "127.0.0.1", server.server_address[1],
                                "VENDOR")
        sent = storescu(gw.port, CT[:6], "RESEARCH")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert wait_for(lambda: fwd._limit == 1, timeout=120), gw.queue.status()
        release(held)
        fwd._give_slot()
        assert wait_for(lambda: gw.queue.counts().get("research", {}).get("done") == 6, timeout=300), \
            gw.queue.status()
        rows = gw.queue._con().execute("SELECT attempts FROM jobs").fetchall()
        assert [r[0] for r in rows] == [0] * 6
        assert len(set(arrived)) == 6
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "a second association was refused while 1 was open" in text
        assert "unreachable" not in text and "will retry" not in text
    finally:
        gw.stop()
        server.shutdown()


def ct_series(tmp_path: Path, slices: int) -> dict:
    """benchmarks/ct_series.py: storescu -> `miadmark gateway` -> `miadmark receive`, services as deployed."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ct_series.py"), "--slices", str(slices),
                           "--timeout", "1500", "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_delivered_once(result: dict, slices: int) -> None:
    assert result["storescu_returncode"] == 0 and result["stored"] == slices == result["sent"]
    # every slice went out protected, and the gateway protected `slices` instances: none twice
    assert result["protections"] == slices
    assert (result["send_failed"], result["dead_letter"], result["receiver_duplicates"],
            result["receiver_quarantined"]) == (0, 0, 0, 0)  # no retry, no resend
    assert result["trouble_lines"] == {"receive": [], "gateway": []}  # no timeout, no retry, no traceback


def test_ct_series_benchmark_tiny_run(tmp_path):
    result = ct_series(tmp_path, 3)
    assert_delivered_once(result, 3)
    assert result["seconds"] > 0 and result["profile"] == "(default)" and "machine" in result["machine"]


def test_96_ct_slices_reach_the_research_node_with_no_timeout_no_retry_each_protected_once(tmp_path):
    assert_delivered_once(ct_series(tmp_path, 96), 96)


def test_forwarder_rss_benchmark_tiny_run(tmp_path):
    """benchmarks/forwarder_rss.py (2,000 instances by default): a tiny run samples the forwarding child."""
    out = tmp_path / "rss.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "forwarder_rss.py"), "--count", "24",
                           "--route", "pass", "--chunk", "12", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["delivered"] == 24 and result["send_retries"] == []
    assert result["samples"][-1][0] == 24 and all(rss > 0 for _, rss in result["samples"])
    assert result["growth_after_quarter_mb"] == round(result["rss_end_mb"] - result["rss_quarter_mb"], 1)
