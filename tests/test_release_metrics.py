"""A release counts on its site's gateway /metrics (dicomnet.metrics multiprocess files): the gateway runs as
a service (`miadmark gateway --config`), a release runs with the same configuration, and one scrape shows
the gateway's deliveries and the release's under the same names and labels.

What a finished process leaves behind is checked too: its counts stay, its live gauge goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.storescu import send_files
from miadmark.audit import read_audit
from orthanc_plugin.testing import OrthancProcess, missing
from test_ops_metrics import _refused, get, scrape, value
from waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
CT = sorted((ROOT.parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data").glob("*.dcm"))


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_an_exited_process_keeps_its_counts_and_drops_its_device(tmp_path):
    """Counters and histograms sum over every process's file; engine_device (livemax) shows running
    engines only, once a scrape has dropped the files of processes that are gone."""
    folder = tmp_path / "metrics"
    _python(f"""
        from dicomnet import metrics
        assert metrics.use_multiprocess({str(folder)!r})
        metrics.count_audit("sent", {{"destination": "research", "profile": "plain", "action": "protect"}})
    """)  # the service's first process: the folder starts empty
    _python(f"""
        from dicomnet import metrics
        assert metrics.join_multiprocess({str(folder)!r})
        for _ in range(2):
            metrics.count_audit("sent", {{"destination": "research", "profile": "plain", "action": "protect"}})
        metrics.observe_protect("plain", 1.0, 2, "cpu")
    """)  # a release worker: joins, counts, exits
    assert list(folder.glob("gauge_livemax_*.db"))
    text = _python(f"""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from dicomnet import metrics
        assert metrics.join_multiprocess({str(folder)!r})
        metrics.forget_dead_processes()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
    """)
    samples = {(s.name, *sorted(s.labels.items())): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert value(samples, "miadmark_instances_sent_total", destination="research", profile="plain",
                 action="protect") == 3
    assert value(samples, "miadmark_instances_protected_total", destination="research", profile="plain") == 3
    assert value(samples, "miadmark_protect_seconds_count", profile="plain") == 2
    assert not any(k[0] == "miadmark_engine_device" for k in samples)
    assert not list(folder.glob("gauge_livemax_*.db"))


def test_join_leaves_an_unusable_folder_and_counts_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _python(f"""
        from dicomnet import metrics
        assert not metrics.join_multiprocess({str(blocker / "metrics")!r})
        assert not metrics.multiprocess()
        metrics.count_audit("sent", {{"destination": "d", "profile": "p", "action": "pass"}})
        assert metrics.get().registry is not None
    """)


def _site(tmp: Path, site_keys, *, gw_port: int, gw_metrics: int, dest) -> Path:
    key, cert = site_keys["hospital_paths"]
    _, research_cert = site_keys["research_paths"]
    path = tmp / "site.yaml"
    path.write_text(f"""\
identity: {{key: {key}, cert: {cert}}}
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: {gw_port}
  spool: spool/
  device: cpu
  retry: {{base_s: 0.1, max_s: 0.5, max_attempts: 100}}
  metrics_port: {gw_metrics}
destinations:
  research: {{stow_url: '{dest.url}/dicom-web/studies'}}
rules:
  - send_to: [research]
    action: protect
    recipients: [{research_cert}]
    profile: plain
""")
    return path


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=missing() or "")
@pytest.mark.parametrize("forward", ["process", "thread"])
def test_a_release_counts_on_the_gateway_metrics_like_a_delivery(tmp_path, site_keys, forward):
    """The gateway as a service, its forwarding in a child process (the default) or in threads."""
    pytest.importorskip("ray")
    pytest.importorskip("dicomweb_client")
    released, delivered = CT[:3], CT[3:4]
    with OrthancProcess(tmp_path / "source", aet="ARCHIVE", plugin=False) as source, \
            OrthancProcess(tmp_path / "dest", aet="RESEARCH", plugin=False) as dest:
        for path in released:
            source.upload(path)
        gw_port, gw_metrics = free_port(), free_port()
        config = _site(tmp_path, site_keys, gw_port=gw_port, gw_metrics=gw_metrics, dest=dest)
        log = open(tmp_path / "gateway.log", "wb")
        gateway = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "gateway", "--config", str(config),
                                    "--forward", forward],
                                   cwd=tmp_path, stdout=log, stderr=log)
        try:
            assert wait_for(lambda: get(f"http://127.0.0.1:{gw_metrics}/health")[0] == 200
                            if not _refused(gw_metrics) else gateway.poll() is not None, timeout=60)
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
            assert send_files("127.0.0.1", gw_port, delivered, called_ae="GW", calling_ae="PACS") == [0]

            def sent() -> float:
                return value(scrape(gw_metrics), "miadmark_instances_sent_total", destination="research",
                             profile="plain", action="protect")
            assert wait_for(lambda: sent() == 1, timeout=120), (tmp_path / "gateway.log").read_text()

            release = subprocess.run(
                [sys.executable, "-m", "miadmark.cli", "release", "--source", source.url + "/dicom-web",
                 "--dest", "research", "--config", str(config), "--state", str(tmp_path / "state"),
                 "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
            assert release.returncode == 0, release.stdout + release.stderr[-3000:]
            assert "release: 3 sent" in release.stdout, release.stdout

            m = scrape(gw_metrics)
            assert value(m, "miadmark_instances_sent_total", destination="research", profile="plain",
                         action="protect") == 4  # one label set: the gateway's delivery and the release's three
            assert value(m, "miadmark_instances_protected_total", destination="research", profile="plain") == 4
            assert value(m, "miadmark_protect_seconds_count", profile="plain") == 4
            assert value(m, "miadmark_engine_device", device="cpu") == 1  # the gateway's engine still runs
            folder = tmp_path / "spool" / "metrics"
            release_pids = {p.stem.rsplit("_", 1)[-1] for p in folder.glob("counter_*.db")} - _gateway_pids(gateway)
            assert release_pids  # the release's workers counted here, and have exited ...
            assert not {p.stem.rsplit("_", 1)[-1] for p in folder.glob("gauge_live*.db")} & release_pids
            assert len(dest.instances()) == 4
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
            log.close()

    lines = read_audit(tmp_path / "spool" / "audit.jsonl")
    ways = Counter(line["way"] for line in lines if line["event"] == "sent")
    assert ways == Counter({"gateway": 1, "release": 3})
    assert {line["sop_instance_uid"] for line in lines if line["event"] == "sent" and line["way"] == "release"} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in released}


def _gateway_pids(proc: subprocess.Popen) -> set[str]:
    """The gateway and its forwarding child."""
    pids = {str(proc.pid)}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid):
                pids.add(stat.parent.name)
        except OSError:
            continue
    return pids
