"""Service packaging: the systemd units pass `systemd-analyze verify`, and the container recipe's build
steps and compose services run here as plain processes (this machine has no container runtime)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from test_ops_metrics import CT, free_port, get, wait_for

from dicom_node.storescu import send_files
from miadmark.cli import build_parser
from miadmark.keys import new_identity

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "packaging" / "systemd").glob("*.service"))
CONTAINER = REPO / "packaging" / "container"
REQUIRED = ["User=miadmark", "Restart=on-failure", "ProtectSystem=strict", "PrivateTmp=true", "NoNewPrivileges=true",
            "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=miadmark/", "LogsDirectory=miadmark"]


def unit_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] not in "#;")


def test_units_have_the_service_settings_and_a_valid_command():
    assert [u.name for u in UNITS] == ["miadmark-gateway.service", "miadmark-receiver.service"]
    for unit in UNITS:
        text = unit.read_text()
        missing = [r for r in REQUIRED if r not in text]
        assert not missing, f"{unit.name}: {missing}"
        argv = shlex.split(unit_lines(unit)["ExecStart"])
        args = build_parser().parse_args(argv[1:])  # the options exist and parse
        assert args.log_file.startswith("/var/log/miadmark/") and args.config.startswith("/etc/miadmark/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd: .ci/install-ops.sh)")
def test_systemd_analyze_verify_and_security(tmp_path):
    exe = REPO / ".venv" / "bin" / "miadmark"
    assert exe.exists(), "the project's .venv (README) is needed: ExecStart must name an executable"
    for unit in UNITS:
        local = tmp_path / unit.name  # the same unit, with ExecStart pointing at this checkout's install
        local.write_text(unit.read_text().replace("/opt/miadmark/.venv/bin/miadmark", str(exe)))
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stdout + res.stderr
        res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(local)],
                             capture_output=True, text=True, timeout=60)
        level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr).group(1))
        assert level <= 4.0, f"{unit.name}: exposure {level} (systemd-analyze security)"


def container_ports() -> dict[int, int]:
    return {p: free_port() for p in (11112, 11113, 4242, 8042, 9100, 9101)}


def localize(text: str, prefix: Path, keys: Path, state: Path, ports: dict[int, int]) -> str:
    """A container path / host / port made a path / host / port of this machine."""
    text = text.replace("/opt/miadmark/etc", str(prefix / "etc")).replace("/etc/miadmark/keys", str(keys))
    text = text.replace("/var/lib/miadmark", str(state)).replace("0.0.0.0", "127.0.0.1")
    text = text.replace("host: research", "host: 127.0.0.1")
    text = text.replace('"RESEARCH", "research"', '"RESEARCH", "127.0.0.1"')
    text = text.replace('"RemoteAccessAllowed" : true', '"RemoteAccessAllowed" : false')
    for inside, here in ports.items():
        text = re.sub(rf"\b{inside}\b", str(here), text)
    return text


@pytest.mark.slow
def test_container_build_steps_and_compose_services_as_processes(tmp_path):
    """build.sh (what the Dockerfile runs) into a prefix, then compose.yaml's services with its
    commands: research node, gateway and (where Orthanc is installed) the hospital Orthanc."""
    prefix, keys, state = tmp_path / "opt", tmp_path / "keys", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the built install, not this checkout
    env.update(MIADMARK_SKIP_APT="1", MIADMARK_REUSE_SITE=sysconfig.get_paths()["purelib"], PYTHON=sys.executable)
    res = subprocess.run(["sh", str(CONTAINER / "build.sh"), str(prefix)], env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0 and "miadmark 0.1.0" in res.stdout, res.stdout + res.stderr
    new_identity("hospital", keys)
    new_identity("research", keys)
    ports = container_ports()
    for cfg in (prefix / "etc").iterdir():
        cfg.write_text(localize(cfg.read_text(), prefix, keys, state, ports))
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    env["PATH"] = f"{prefix / 'venv' / 'bin'}:{env['PATH']}"
    env["MIADMARK_VENV"] = str(prefix / "venv")
    services = ["research", "gateway"] + (["orthanc"] if shutil.which("Orthanc") else [])
    procs = {}
    try:
        for name in services:
            argv = [localize(a, prefix, keys, state, ports) for a in compose["services"][name]["command"]]
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
        for name, port in (("research", ports[9101]), ("gateway", ports[9100])):
            assert wait_for(lambda: procs[name].poll() is None and _ok(f"http://127.0.0.1:{port}/health"),
                            timeout=90), (tmp_path / f"{name}.log").read_text()
        assert send_files("127.0.0.1", ports[11112], CT[:2], called_ae="RESEARCH", calling_ae="CT1") == [0, 0]
        stored = state / "research" / "received"
        assert wait_for(lambda: len(list(stored.rglob("*.dcm"))) == 2, timeout=120), \
            (tmp_path / "gateway.log").read_text()
        if "orthanc" in procs:
            url = f"http://127.0.0.1:{ports[8042]}"
            assert wait_for(lambda: _ok(f"{url}/miadmark/status"), timeout=90), (tmp_path / "orthanc.log").read_text()
            status, body = get(f"{url}/miadmark/destinations")
            assert status == 200 and "research" in body
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _ok(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_compose_file_names_the_three_services_and_the_image():
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    assert set(compose["services"]) == {"research", "gateway", "orthanc"}
    assert all(s["image"] == "miadmark" and s["restart"] == "on-failure" for s in compose["services"].values())
    dockerfile = (CONTAINER / "Dockerfile").read_text()
    assert "packaging/container/build.sh" in dockerfile and "USER miadmark" in dockerfile
    json.loads((CONTAINER / "config" / "orthanc.json").read_text())  # Orthanc's JSON (no comments here)
