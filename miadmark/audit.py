"""The audit trail of both adapters: one JSON line per instance and decision, ONE writer and format.

    {"time": "...Z", "event": "<what happened>", <fields: AE titles, UIDs, rule, destination, reason, path>}

Lines hold AE titles, UIDs, rule labels, destinations, recipient certificate subjects and outcomes,
never patient names or element values. Every event passes through AuditLog.write (one place for a
metrics hook).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .private import FILE_MODE, private_dir

HOOKS: list = []  # callables (event, fields) -> None, e.g. metrics counters; must not raise


class AuditLog:
    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            private_dir(self.path.parent, tighten=False)  # the file itself is 0600
        self._lock = threading.Lock()

    def write(self, event: str, **fields) -> None:
        if self.path is not None:
            self._append(event, fields)
        for hook in HOOKS:  # after the line is written: a metric never counts what the trail lacks
            hook(event, fields)

    def _append(self, event: str, fields: dict) -> None:
        now = time.time()
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
                  "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def read_audit(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
