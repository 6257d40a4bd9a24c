"""Receipt log lines a person can read: one per study per association, with counts."""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict


class AssociationTally:
    """Counts outcomes per (association, study); `flush(assoc)` logs one line per study."""

    def __init__(self, logger: logging.Logger, what: str):
        self.log = logger
        self.what = what
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self._peers: dict[int, str] = {}

    def count(self, assoc, study: str, outcome: str, peer: str) -> None:
        with self._lock:
            self._counts[id(assoc)][study][outcome] += 1
            self._peers[id(assoc)] = peer

    def flush(self, assoc) -> None:
        with self._lock:
            studies = self._counts.pop(id(assoc), {})
            peer = self._peers.pop(id(assoc), "?")
        for study, counts in studies.items():
            total = sum(counts.values())
            detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            self.log.info("study %s from %s: %d instance%s %s: %s", study, peer, total, "" if total == 1 else "s",
                          self.what, detail)
