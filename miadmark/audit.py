"""The audit trail of every way out (gateway, Orthanc plugin, cohort release) and of the receivers:
one JSON line per instance and decision, ONE writer and format.

    {"time": "...Z", "event": "<what happened>", <fields: AE titles, UIDs, rule, destination, reason, path>}

Lines hold AE titles, UIDs, rule labels, destinations, recipient certificate subjects and outcomes,
never patient names or element values. Every event passes through AuditLog.write (one place for a
metrics hook: the counters follow the trail, whichever way out wrote it).

The export events (the same names from all three ways out; fields from export_fields):
  sent            delivered; sent_sop_instance_uid, and `note` for a lesion source (FORWARDED_*),
                  `lesion_mask` for a protected image
  quarantined     the export step refused it (or the rules now block it): not sent; `reason`
  dead_letter     delivery failed for good; `error`
  send_failed     one delivery attempt failed (retried); `error`
  protect_deferred  the export step could not make it now (transient); `reason`
  blocked         the rules send nothing of it to this destination; `reason`
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .private import FILE_MODE, private_dir

HOOKS: list = []  # callables (event, fields) -> None, e.g. metrics counters; must not raise
SENT, QUARANTINED, DEAD_LETTER, SEND_FAILED, PROTECT_DEFERRED, BLOCKED = (
    "sent", "quarantined", "dead_letter", "send_failed", "protect_deferred", "blocked")


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


def export_fields(*, sop_instance_uid: str, destination: str, action: str, rule: str, way: str,
                  study_instance_uid: str = "", calling_ae: str = "", called_ae: str = "",
                  recipients: list[str] | None = None, profile: str | None = None,
                  deidentify: str | None = None) -> dict:
    """The fields every export line carries, whichever way out (`way`: gateway, orthanc, release)."""
    fields = {"sop_instance_uid": sop_instance_uid, "study_instance_uid": study_instance_uid,
              "calling_ae": calling_ae, "called_ae": called_ae, "rule": rule, "action": action,
              "destination": destination, "way": way}
    if action == "protect":
        fields.update(recipients=recipients or [], profile=profile, deidentify=deidentify)
    return fields


def recipient_names(paths) -> list[str]:
    """The recipients' certificate subjects for an audit line (their file names when they do not load)."""
    from . import loaded
    from .errors import MiadmarkError
    from .keys import subject_name
    try:
        return [subject_name(c) for c in loaded.certificates([str(p) for p in paths])]
    except (MiadmarkError, OSError, ValueError):
        return [Path(p).name for p in paths]


def outcome_fields(outcome) -> dict:
    """What a `sent` line adds for the export step's outcome (miadmark.export): a lesion source's note,
    or whether a protected image's lesions were masked."""
    note = getattr(outcome, "note", None)
    if note:
        return {"note": note}
    masked = getattr(outcome, "lesion_masked", None)
    return {} if masked is None else {"lesion_mask": masked}


def read_audit(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
