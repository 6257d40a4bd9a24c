"""Metrics, health and status page of the gateway and the receiving node, over real HTTP and DICOM.

The two-process test runs `miadmark gateway` as users do (receiving process + forwarding child) and
checks that counts made in either process reach /metrics (prometheus-client multiprocess mode)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from miadmark.audit import read_audit
from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.config import load_config
from waiting import free_port, wait_for

CT = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data")
            .glob("*.dcm"))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} of GET /metrics."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)


def site_yaml(tmp: Path, site_keys: dict, *, gw_port: int, rx_port: int, gw_metrics: int, rx_metrics: int,
              rx_keys: bool = True, profile: str | None = "plain") -> Path:
    path = tmp / "site.yaml"
    profile_line = f"    profile: {profile}\n" if profile else ""
    keys = site_keys["hospital_paths"][0].parent  # conftest's session keys: hospital.*, research.*
    rx_key_line = f"  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]\n" if rx_keys else ""
    path.write_text(f"""\
identity: {{key: {keys}/hospital.key.pem, cert: {keys}/hospital.cert.pem}}
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: {gw_port}
  spool: spool/
  device: cpu
  retry: {{base_s: 0.1, max_s: 0.5, max_attempts: 100}}
  metrics_port: {gw_metrics}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [{keys}/research.cert.pem]
{profile_line}  - when: {{called_ae: ARCHIVE}}
    send_to: [research]
    action: pass
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: quarantine/
  allow_calling: [GW]
  plain: store
{rx_key_line}  trust: [{keys}/hospital.cert.pem]
  metrics_port: {rx_metrics}
""")
    return path




def test_in_process_counts_health_and_status_page(tmp_path, site_keys):
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0)
    rx = Receiver(load_config(cfg_path)).start()
    gw = Gateway(load_config(cfg_path)).start()
    try:
        before_gw, before_rx = scrape(gw.monitor.port), scrape(rx.monitor.port)
        assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
        assert send_files("127.0.0.1", gw.port, CT[3:4], called_ae="NOWHERE", calling_ae="PACS") == [0x0124]
        assert wait_for(lambda: gw.queue.counts().get("research", {}).get("done") == 3)
        # a job is marked done just before its `sent` line (and count) is written
        sent = {"destination": "research", "profile": "", "action": "pass"}
        assert wait_for(lambda: value(scrape(gw.monitor.port), "miadmark_instances_sent_total", **sent)
                        - value(before_gw, "miadmark_instances_sent_total", **sent) == 3)
        after = scrape(gw.monitor.port)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before_gw, name, **labels)
        assert delta("miadmark_instances_received_total", node="gateway") == 3
        assert delta("miadmark_instances_blocked_total", destination="") == 1
        assert delta("miadmark_instances_sent_total", destination="research", profile="", action="pass") == 3
        assert value(after, "miadmark_queue_jobs", destination="research", state="done") == 3
        assert value(after, "miadmark_queue_jobs", destination="research", state="pending") == 0
        rx_after = scrape(rx.monitor.port)
        assert (value(rx_after, "miadmark_instances_received_total", node="receiver")
                - value(before_rx, "miadmark_instances_received_total", node="receiver")) == 3

        status, body = get(f"http://127.0.0.1:{gw.monitor.port}/health")
        health = json.loads(body)
        assert status == 200 and health["ready"] and set(health["checks"]) == {
            "listening", "queue_writable", "keys_loaded", "forwarding"}
        status, page = get(f"http://127.0.0.1:{gw.monitor.port}/")
        sent_uids = [r["sop_instance_uid"] for r in read_audit(gw.config.gateway.audit) if r["event"] == "sent"]
        assert status == 200 and all(uid in page for uid in sent_uids)
        assert 'http-equiv="refresh"' in page and "blocked" in page
        assert get(f"http://127.0.0.1:{gw.monitor.port}/nope")[0] == 404
    finally:
        gw.stop()
        rx.stop()
    assert wait_for(lambda: _refused(gw.monitor.port), timeout=5)  # the HTTP server stopped with the gateway


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_health_503_names_the_failing_check(tmp_path, site_keys):
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0, rx_keys=False)
    rx = Receiver(load_config(cfg_path)).start()
    try:
        status, body = get(f"http://127.0.0.1:{rx.monitor.port}/health")
        health = json.loads(body)
        assert status == 503 and not health["ready"]
        assert health["checks"]["keys_loaded"]["ok"] is False and health["checks"]["listening"]["ok"] is True
    finally:
        rx.stop()


def test_default_profile_is_labelled_with_the_engine_it_resolves_to(tmp_path, site_keys):
    """A rule with no `profile:` runs the default, `auto`: the metrics and the audit name the engine used
    (`fast` on this CPU-only gateway), never an empty label."""
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0, profile=None)
    rx = Receiver(load_config(cfg_path)).start()
    gw = Gateway(load_config(cfg_path)).start()
    try:
        # this process's registry also holds what earlier tests protected: compare before and after
        before = scrape(gw.monitor.port)
        protected0 = value(before, "miadmark_instances_protected_total", destination="research", profile="fast")
        seconds0 = value(before, "miadmark_protect_seconds_count", profile="fast")
        assert send_files("127.0.0.1", gw.port, CT[:1], called_ae="RESEARCH", calling_ae="PACS") == [0]
        assert wait_for(lambda: gw.queue.counts().get("research", {}).get("done") == 1, timeout=120)
        m = scrape(gw.monitor.port)
        assert value(m, "miadmark_instances_protected_total", destination="research", profile="fast") == protected0 + 1
        assert value(m, "miadmark_protect_seconds_count", profile="fast") == seconds0 + 1
        assert not any(k[0].startswith("miadmark_protect_seconds") and ("profile", "") in k for k in m)
        sent = [r for r in read_audit(gw.config.gateway.audit) if r["event"] == "sent"]
        assert [r["profile"] for r in sent] == ["fast"]
    finally:
        gw.stop()
        rx.stop()


def test_metrics_port_in_use_is_named(tmp_path, site_keys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=port, rx_metrics=port)
        with pytest.raises(OSError, match=f"metrics port 127.0.0.1:{port}"):
            Receiver(load_config(cfg_path)).start()


@pytest.mark.slow
def test_two_process_gateway_counts_both_processes(tmp_path, site_keys):
    """`miadmark gateway` as a service runs it: receipts counted by the receiving process, protection
    and delivery by the forwarding child; one /metrics shows both."""
    gw_port, rx_port, gw_metrics = free_port(), free_port(), free_port()
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=gw_port, rx_port=rx_port, gw_metrics=gw_metrics, rx_metrics=0)
    rx = Receiver(load_config(cfg_path)).start()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "gateway", "--config", str(cfg_path)],
                            cwd=tmp_path, stdout=log, stderr=log)
    try:
        assert wait_for(lambda: get(f"http://127.0.0.1:{gw_metrics}/health")[0] == 200 if not _refused(gw_metrics)
                        else proc.poll() is not None, timeout=60), (tmp_path / "gateway.log").read_text()
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        n = 4
        assert send_files("127.0.0.1", gw_port, CT[:n], called_ae="RESEARCH", calling_ae="PACS") == [0] * n
        assert send_files("127.0.0.1", gw_port, CT[n:n + 1], called_ae="NOWHERE", calling_ae="PACS") == [0x0124]
        assert wait_for(lambda: value(scrape(gw_metrics), "miadmark_queue_jobs", destination="research",
                                      state="done") == n, timeout=120), (tmp_path / "gateway.log").read_text()
        m = scrape(gw_metrics)
        assert value(m, "miadmark_instances_received_total", node="gateway") == n  # receiving process
        assert value(m, "miadmark_instances_blocked_total", destination="") == 1
        assert value(m, "miadmark_instances_sent_total", destination="research", profile="plain",
                     action="protect") == n  # forwarding process
        assert value(m, "miadmark_instances_protected_total", destination="research", profile="plain") == n
        assert value(m, "miadmark_protect_seconds_count", profile="plain") == n
        assert value(m, "miadmark_protect_seconds_sum", profile="plain") > 0
        assert value(m, "miadmark_engine_device", device="cpu") == 1
        assert value(m, "miadmark_queue_oldest_pending_seconds", destination="research") == 0
        assert len(list(rx.rx.store.rglob("*.dcm"))) == n
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        rx.stop()


def test_rejected_association_is_logged_audited_and_counted(tmp_path, site_keys, caplog):
    """dcmtk echoscu with a calling AE title the node does not allow: one log line naming it, the peer and
    the reason (no traceback), an audit record, and miadmark_associations_rejected_total counts it."""
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0)
    cfg_path.write_text(cfg_path.read_text().replace("  spool: spool/\n", "  spool: spool/\n  allow_calling: [PACS]\n"))
    rx = Receiver(load_config(cfg_path)).start()
    gw = Gateway(load_config(cfg_path)).start()
    caplog.set_level("INFO")
    try:
        before_gw, before_rx = scrape(gw.monitor.port), scrape(rx.monitor.port)
        for port, called in ((gw.port, "GW"), (rx.port, "RESEARCH")):
            echo = subprocess.run(["echoscu", "-aet", "PACS2", "-aec", called, "127.0.0.1", str(port)],
                                  capture_output=True, text=True, timeout=60)
            assert echo.returncode != 0 and "Calling AE Title Not Recognized" in echo.stdout + echo.stderr
        ok = subprocess.run(["echoscu", "-aet", "PACS", "-aec", "GW", "127.0.0.1", str(gw.port)],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert wait_for(lambda: sum("PACS2" in r.getMessage() for r in caplog.records) == 2, timeout=10)
        lines = [r for r in caplog.records if "PACS2" in r.getMessage()]
        assert all("rejected: calling ae title not recognised" in r.getMessage() and "127.0.0.1:" in r.getMessage()
                   and r.exc_info is None for r in lines)
        for node, monitor, before, audit in (("gateway", gw.monitor, before_gw, gw.config.gateway.audit),
                                             ("receiver", rx.monitor, before_rx, rx.rx.audit)):
            after = scrape(monitor.port)
            assert (value(after, "miadmark_associations_rejected_total", node=node)
                    - value(before, "miadmark_associations_rejected_total", node=node)) == 1
            records = [r for r in read_audit(audit) if r["event"] == "association_rejected"]
            assert [(r["calling_ae"], r["reason"]) for r in records] == [("PACS2", "calling ae title not recognised")]
            assert records[0]["peer"].startswith("127.0.0.1:")
    finally:
        gw.stop()
        rx.stop()
