"""Every benchmark runs: each script at a tiny size, as a user runs it (its own process), must finish with exit
status 0 and print its result lines. Numbers are not checked (no timed asserts): a benchmark that no longer
completes (a removed import, a refused step, a count that never arrives) fails here instead of silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orthanc_plugin.testing import missing

REPO = Path(__file__).resolve().parents[1]
needs_orthanc = pytest.mark.skipif(bool(missing()), reason=str(missing()))  # fails in CI (MIADMARK_REQUIRE_ALL)


def run(script: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_record_payload(tmp_path):
    out = run("record_payload.py", "--tiny", "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    ct = result["sets"]["ct/fast"]["candidates"]
    assert {"protect-default", "changed-lzma0", "residual-zstd1", "original-zstd1"} <= set(ct)
    assert "protect-default" in out


def test_ops_overhead():
    out = run("ops_overhead.py", "--tiny")
    assert "audit write:" in out and "/metrics" in out


def test_listener_bounds():
    assert "connection closed" in run("listener_bounds.py", "--declared-mib", "16")


@pytest.mark.slow
def test_core():
    out = run("core.py", "--slices", "2", "--batch", "2", "--profiles", "plain", "fast")
    assert out.count("strip exact 2/2") == 2 and "fast end to end / plain" in out


@pytest.mark.slow
def test_engine(tmp_path):
    run("engine.py", "--tiny", "--engines", "fast", "plain", "--threads", "1", "--json", str(tmp_path / "e.json"))
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["end_to_end_ct_512px"][0]["plain_slices_s"] > 0 and len(result["engine_only"]) == 2


@pytest.mark.slow
def test_gateway():
    out = run("gateway.py", "--count", "4", "--protect-count", "2")
    assert "rule pass" in out and "rule protect" in out


@pytest.mark.slow
def test_restart():
    assert "kill" in run("restart.py", "--count", "3", "--kill-after", "1")


@pytest.mark.slow
@needs_orthanc
def test_orthanc_export():
    result = json.loads(run("orthanc_export.py", "--slices", "2"))
    assert result["job_state"] == "Success" and result["slices"] == 2


@pytest.mark.slow
@needs_orthanc
def test_orthanc_crash():
    out = run("orthanc_crash.py", "--slices", "6", "--kills", "1")  # kill points are drawn from slices 2..n-3
    report = json.loads(out[out.index("{"):])
    assert report["export"]["unprotected"] == 0 and report["auto_export"]["unprotected"] == 0


@pytest.mark.slow
@needs_orthanc
def test_release(tmp_path):
    run("release.py", "--slices", "2", "--transfer-slices", "2", "--workers", "1", "--repeat", "1",
        "--json", str(tmp_path / "release.json"))
    assert json.loads((tmp_path / "release.json").read_text())


@pytest.mark.slow
def test_gpu_script_cpu_path(tmp_path):
    """benchmarks/gpu.sh's own code path on this machine: no install, CPU, tiny sizes, one JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--device", "cpu", "--tiny", "--no-install",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["card"] and result["engine"] and result["end_to_end"]


@pytest.mark.slow
def test_checks():
    row = json.loads(run("checks.py", "--tiny").strip().splitlines()[-1])
    assert row["mask_at_S_ms"] > 0 and row["violations_ms"] > 0 and row["fast_engine_ms"] > 0
