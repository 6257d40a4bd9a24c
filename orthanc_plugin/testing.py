"""Real Orthanc processes for tests and benchmarks: free loopback ports, a temporary folder each.

    with OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=yaml_path,
                        modalities={"research": research}) as hospital:
        hospital.upload(path); hospital.post("/modalities/research/store", {...})
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from dicomnet.ports import free_port

ORTHANC = shutil.which("Orthanc")
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
PLUGIN_SCRIPT = Path(__file__).resolve().parent / "plugin.py"


def missing() -> str | None:
    """Why real-Orthanc tests cannot run here, or None."""
    if ORTHANC is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-python orthanc-dicomweb)"
    if not PYTHON_PLUGIN.exists():
        return f"{PYTHON_PLUGIN} is missing (apt-get install orthanc-python)"
    return None


class OrthancProcess:
    def __init__(self, workdir: str | os.PathLike, *, aet: str, plugin: bool = True,
                 miadmark_config: str | os.PathLike | None = None,
                 modalities: dict[str, "OrthancProcess | list"] | None = None,
                 peers: dict[str, "OrthancProcess"] | None = None,
                 dicomweb: dict[str, "OrthancProcess"] | None = None,
                 stable_age: int = 60, extra: dict[str, Any] | None = None):
        self.workdir = Path(workdir)
        self.aet = aet
        self.plugin = plugin
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self.config: dict[str, Any] = {
            "Name": aet,
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpsVerifyPeers": False,
            "StableAge": stable_age,
            "SaveJobs": False,
            "DicomAssociationCloseDelay": 0,
            "ConcurrentJobs": 2,
            "Plugins": [str(p) for p in ([PYTHON_PLUGIN] if plugin else []) + [DICOMWEB_PLUGIN] if p.exists()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {}},
            "DicomModalities": {},
            "OrthancPeers": {},
        }
        if plugin:
            self.config["PythonScript"] = str(PLUGIN_SCRIPT)
            self.config["PythonVerbose"] = False
            if miadmark_config is not None:
                self.config["MiadMark"] = {"Config": str(miadmark_config)}
        for name, other in (modalities or {}).items():
            self.config["DicomModalities"][name] = (
                other if isinstance(other, list) else [other.aet, "127.0.0.1", other.dicom_port])
        for name, other in (peers or {}).items():
            self.config["OrthancPeers"][name] = {"Url": other.url + "/"}
        for name, other in (dicomweb or {}).items():
            self.config["DicomWeb"]["Servers"][name] = {"Url": other.url + "/dicom-web/"}
        self.config.update(extra or {})

    # ------------------------------------------------------------------ life

    def start(self, timeout: float = 90.0) -> "OrthancProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "orthanc.json"
        config_file.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ, MIADMARK_VENV=sys.prefix)
        self.log_path = self.workdir / "orthanc.log"
        with self.log_path.open("ab") as log:  # a restart appends
            self.process = subprocess.Popen([ORTHANC, str(config_file)], cwd=self.workdir, stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        ready = "/miadmark/status" if self.plugin else "/system"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc {self.aet} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(self.url + ready, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc {self.aet} did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """kill -9: no shutdown of any kind (the durability tests' crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "OrthancProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ REST

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None, **kwargs) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        return requests.post(self.url + path, data=data, timeout=kwargs.pop("timeout", 300), **kwargs)

    def put(self, path: str, body: Any, **kwargs) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.put(self.url + path, data=data, timeout=kwargs.pop("timeout", 60), **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def upload(self, path: str | os.PathLike) -> dict:
        response = self.post("/instances", Path(path).read_bytes())
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[str]:
        return self.get_json("/instances")

    def wait_for(self, predicate, timeout: float = 60.0, interval: float = 0.3):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        return predicate()
