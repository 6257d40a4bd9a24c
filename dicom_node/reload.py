"""Reload the configuration on SIGHUP or when the file changes; a bad file keeps the running one."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from miadmark.config import Config, ConfigError, load_config

log = logging.getLogger("dicom_node.reload")


class ConfigWatcher(threading.Thread):
    """Polls the file's content hash every `interval` s; calls apply(new_config) when it changes."""

    def __init__(self, path: str | Path, apply: Callable[[Config], None], interval: float = 2.0, who: str = ""):
        super().__init__(name="config-watch", daemon=True)
        self.who = f" [{who}]" if who else ""
        self.path = Path(path)
        self.apply = apply
        self.interval = interval
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Load and apply the file now. True when applied; False (and a log line) when refused."""
        with self._lock:
            self._digest = self._read_digest()
            try:
                config = load_config(self.path)
            except ConfigError as exc:
                log.error("configuration reload (%s) refused, keeping the running rules%s: %s", reason, self.who, exc)
                return False
            self.apply(config)
            log.info("configuration reloaded (%s)%s: %d rule(s), %d destination(s)", reason, self.who,
                     len(config.rules), len(config.destinations))
            return True

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            digest = self._read_digest()
            if digest is not None and digest != self._digest:
                self.reload("file changed")

    def stop(self) -> None:
        self.stopping.set()
