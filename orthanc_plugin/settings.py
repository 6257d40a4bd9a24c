"""The plugin's settings: the YAML named by Orthanc's "MiadMark": {"Config": ...}, reloaded when it changes.

Plugin-only options live under `orthanc:` in that file (see docs/orthanc.md, "Plugin settings"): device, batch_size,
retry {max_attempts, base_s, max_s}, outbox (the queue database), catch_up_days, raw_downloads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from miadmark import loaded
from miadmark.config import Config, ConfigError, load_config

from .kinds import unserved_destinations
from .sdk import orthanc

RETRY_S = 5.0  # a configuration that did not load is retried this often (on use)


def log(message: str) -> None:
    orthanc.LogWarning(f"MIAD-MARK: {message}")


class Settings:
    """The YAML named by Orthanc's "MiadMark": {"Config": ...}; reloaded when the file changes.
    A bad file keeps the running configuration (or none: then every export is blocked)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.config: Config | None = None
        self.error: str | None = None
        self.identity = None
        self.receiver = None
        self.receiver_error: str | None = None
        self.on_reload = lambda: None
        self._mtime: float | None = None
        self._tried = 0.0
        self._lock = threading.Lock()

    def current(self) -> Config | None:
        with self._lock:
            if self.path is None:
                self.error = 'no "MiadMark": {"Config": "..."} in the Orthanc configuration'
                return None
            try:
                mtime = self.path.stat().st_mtime
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror}"
                return self.config
            retry = self.config is None and time.monotonic() - self._tried > RETRY_S  # e.g. keys made since
            if mtime != self._mtime or retry:
                self._mtime, self._tried = mtime, time.monotonic()
                self._load()
            return self.config

    def _load(self) -> None:
        from .receiver import Receiver

        try:
            cfg = load_config(self.path)
            identity = None
            if cfg.identity is not None:
                identity = loaded.identity(cfg.identity.key, cfg.identity.cert, cfg.identity.passphrase_file)
        except (ConfigError, Exception) as exc:  # noqa: BLE001 - keep the running configuration
            self.error = str(exc)
            log(f"configuration not (re)loaded, keeping the previous one: {exc}")
            return
        receiver, receiver_error = None, None
        if cfg.receiver is not None:
            try:
                receiver = Receiver(cfg.receiver)
                receiver_error = receiver.error
            except Exception as exc:  # noqa: BLE001
                receiver_error = str(exc)
            if receiver_error:
                log(f"receiver keys not loaded (protected instances will be quarantined): {receiver_error}")
        self.config, self.identity, self.error = cfg, identity, None
        self.receiver, self.receiver_error = receiver, receiver_error
        self.on_reload()
        log(f"configuration loaded from {self.path}: {len(cfg.destinations)} destinations, {len(cfg.rules)} rules"
            + (", receiver on" if receiver else ""))
        for name, why in sorted(unserved_destinations(cfg).items()):
            log(f"destination {name}: not sent from Orthanc: {why}")

    def option(self, name: str, default):
        cfg = self.config
        return (cfg.orthanc or {}).get(name, default) if cfg is not None else default


def config_path() -> Path | None:
    section = json.loads(orthanc.GetConfiguration()).get("MiadMark") or {}
    value = os.environ.get("MIADMARK_CONFIG") or section.get("Config")
    if not value:
        return None
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return path
    candidates = [Path.cwd() / path]
    try:
        orthanc_config = Path(orthanc.GetConfigurationPath())
        candidates.append((orthanc_config if orthanc_config.is_dir() else orthanc_config.parent) / path)
    except Exception:  # noqa: BLE001 - older SDKs
        pass
    return next((c for c in candidates if c.exists()), candidates[0])
