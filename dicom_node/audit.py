"""Audit trail: one JSON line per instance and decision (who sent it, which rule, what went where).

Lines hold AE titles, UIDs, rule labels, destinations, recipient certificate subjects and outcomes,
never patient names or pixel values.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .monitoring.metrics import count_audit


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, event: str, **fields) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                  "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        count_audit(event, fields)  # the metrics' one hook: counted once written


def read_audit(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
