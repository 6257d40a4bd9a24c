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


# the configuration files each compose service reads (its command names the first)
SERVICE_CONFIGS = {"research": ["research.yaml"], "gateway": ["gateway.yaml"],
                   "orthanc": ["orthanc.json", "orthanc-miadmark.yaml"]}


def make_compose_keys(keys: Path) -> None:
    """packaging/container/keys.sh, as the compose file's header says to run it."""
    env = {**os.environ, "MIADMARK": f"{sys.executable} -m miadmark.cli", "PYTHONPATH": str(REPO)}
    res = subprocess.run(["sh", str(CONTAINER / "keys.sh"), str(keys)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def service_keys(compose: dict, service: str, keys: Path) -> Path:
    """The key folder compose.yaml mounts into a service, as a folder under `keys`."""
    sources = [v.split(":")[0] for v in compose["services"][service]["volumes"] if ":/etc/miadmark/keys" in v]
    assert len(sources) == 1 and sources[0].startswith("./keys/"), sources
    return keys / sources[0].removeprefix("./keys/")


def test_compose_gives_each_service_only_its_own_key(tmp_path):
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    make_compose_keys(tmp_path / "keys")
    own = {"research": "research", "gateway": "hospital", "orthanc": "hospital"}
    for service, site in own.items():
        folder = service_keys(compose, service, tmp_path / "keys")
        assert sorted(p.name for p in folder.glob("*.key.pem")) == [f"{site}.key.pem"], service
        assert (folder / f"{site}.key.pem").stat().st_mode & 0o777 == 0o600
        for name in SERVICE_CONFIGS[service]:  # every key file the service's configuration names is there
            for ref in re.findall(r"/etc/miadmark/keys/([\w.-]+)", (CONTAINER / "config" / name).read_text()):
                assert (folder / ref).exists(), f"{service}: {name} names {ref}, not in {folder.name}/"


@pytest.mark.slow
def test_container_build_steps_and_compose_services_as_processes(tmp_path):
    """build.sh (what the Dockerfile runs) into a prefix, then compose.yaml's services with its
    commands and each service's own key folder: research node, gateway and (where Orthanc is installed)
    the hospital Orthanc."""
    prefix, keys, state = tmp_path / "opt", tmp_path / "keys", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the built install, not this checkout
    env.update(MIADMARK_SKIP_APT="1", MIADMARK_REUSE_SITE=sysconfig.get_paths()["purelib"], PYTHON=sys.executable)
    res = subprocess.run(["sh", str(CONTAINER / "build.sh"), str(prefix)], env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0 and "miadmark 0.1.0" in res.stdout, res.stdout + res.stderr
    make_compose_keys(keys)
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    ports = container_ports()
    for service, names in SERVICE_CONFIGS.items():
        for name in names:
            cfg = prefix / "etc" / name
            cfg.write_text(localize(cfg.read_text(), prefix, service_keys(compose, service, keys), state, ports))
    env["PATH"] = f"{prefix / 'venv' / 'bin'}:{env['PATH']}"
    env["MIADMARK_VENV"] = str(prefix / "venv")
    services = ["research", "gateway"] + (["orthanc"] if shutil.which("Orthanc") else [])
    procs = {}
    try:
        health = {"research": ports[9101], "gateway": ports[9100]}
        for name in services:  # in compose's depends_on order, each up before the next starts
            argv = [localize(a, prefix, keys, state, ports) for a in compose["services"][name]["command"]]
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
            if name in health:
                assert wait_for(lambda: procs[name].poll() is None and _ok(f"http://127.0.0.1:{health[name]}/health"),
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


def _as_user(uid: int, gid: int, argv: list[str], **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    """argv run as uid:gid with no other groups (what systemd's User= gives the service)."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=env, cwd="/", **kw)
    return subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-sysusers") is None or shutil.which("setpriv") is None,
                    reason="needs root, systemd-sysusers and setpriv (Debian packages systemd, util-linux)")
def test_install_script_puts_everything_where_the_units_expect_it(tmp_path):
    """packaging/install.sh --root DIR (docs/service.md's step), then: the units' ExecStart exists there,
    they pass systemd-analyze verify, the user exists, and as that user the installed code reads the
    installed configuration and 0600 keys and runs the receiving node (another user cannot read them)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="miadmark-root-"))  # outside pytest's 0700 folder: the user must walk it
    try:
        root.chmod(0o755)
        keys = tmp_path / "keys"
        new_identity("hospital", keys)
        new_identity("research", keys)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(MIADMARK_REUSE_SITE=sysconfig.get_paths()["purelib"], PYTHON=sys.executable)
        res = subprocess.run(["sh", str(REPO / "packaging" / "install.sh"), "--root", str(root), "--keys", str(keys)],
                             env=env, capture_output=True, text=True, timeout=500)
        assert res.returncode == 0 and "miadmark 0.1.0" in res.stdout, res.stdout + res.stderr
        user = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                    if line.startswith("miadmark:"))
        uid, gid = int(user[2]), int(user[3])
        assert (root / "opt/miadmark/orthanc_plugin/plugin.py").exists()  # where orthanc.json's PythonScript is
        for unit in UNITS:
            installed = root / "etc/systemd/system" / unit.name
            exe = shlex.split(unit_lines(installed)["ExecStart"])[0]
            assert (root / exe.lstrip("/")).exists(), exe
            if shutil.which("systemd-analyze"):
                local = tmp_path / unit.name
                local.write_text(installed.read_text().replace(exe, str(root / exe.lstrip("/"))))
                res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local)], capture_output=True,
                                     text=True, timeout=60)
                assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
        etc = root / "etc/miadmark"
        assert (etc.stat().st_mode & 0o777, etc.stat().st_gid) == (0o750, gid)
        for key in (etc / "keys").glob("*.key.pem"):
            assert (key.stat().st_mode & 0o777, key.stat().st_uid) == (0o600, uid), key
        rx_port = free_port()
        for name in ("gateway", "receiver"):  # the installed configuration, with this test root's paths
            text = (etc / f"{name}.yaml").read_text().replace("/etc/miadmark", str(etc))
            text = text.replace("/var/lib/miadmark", str(root / "var/lib/miadmark")).replace("11113", str(rx_port))
            local = etc / f"{name}.local.yaml"
            local.write_text(text)
            os.chown(local, 0, gid)
            local.chmod(0o640)
            miadmark = str(root / "opt/miadmark/.venv/bin/miadmark")
            res = _as_user(uid, gid, [miadmark, "rules", "check", "--config", str(local)])
            assert res.returncode == 0 and ": OK:" in res.stdout, res.stdout + res.stderr
            res = _as_user(65534, 65534, [miadmark, "rules", "check", "--config", str(local)])
            assert res.returncode != 0 and "Permission denied" in res.stdout + res.stderr
        state = root / "var/lib/miadmark/receiver"  # what StateDirectory= makes for the service
        state.mkdir(parents=True)
        os.chown(state, uid, gid)
        log = open(tmp_path / "receiver.log", "wb")
        proc = _as_user(uid, gid, [miadmark, "receive", "--config", str(etc / "receiver.local.yaml")],
                        background=True, stdout=log, stderr=log)
        try:
            assert wait_for(lambda: proc.poll() is None and "listening" in (tmp_path / "receiver.log").read_text(),
                            timeout=90), (tmp_path / "receiver.log").read_text()
            assert send_files("127.0.0.1", rx_port, CT[:1], called_ae="RESEARCH", calling_ae="MIADMARK") == [0]
            stored = list((state / "received").rglob("*.dcm"))
            assert len(stored) == 1 and stored[0].stat().st_uid == uid
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
