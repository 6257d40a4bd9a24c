"""The plugin's durable exports: the shared work queue plus the export jobs that group its rows.

One SQLite database (WAL) per Orthanc, by default <StorageDirectory>/miadmark/exports.sqlite:
  jobs         dicomnet.queue.Queue, through its public methods: one row per (instance, destination),
               states pending / done / dead / quarantined, attempts, next_try with backoff, last_error.
               Here `file` is the Orthanc instance ID (Orthanc holds the original), `sent_sop_uid`
               the SOP Instance UID that left, `batch` the export job and `receipt` the instance's
               ReceptionDate when queued (a study deleted and received again is exported again).
  export_jobs  one row per export the plugin accepted (REST route, Explorer, C-MOVE, auto-export):
               its target, its request options and whether failures are retried.

A job's counts and state are read from its rows, so they are what was delivered, and survive a
restart (kill -9 included: every state change is a commit before the next step). No Orthanc
import here: unit-testable.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicomnet.queue import Job as Row
from dicomnet.queue import Queue
from miadmark.private import write_private

JOB_PREFIX = "miadmark-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS export_jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,        -- MiadmarkExport | MiadmarkProtect | MiadmarkMove | MiadmarkAutoExport
    description TEXT NOT NULL,
    target_kind TEXT NOT NULL,        -- modality | peer | dicomweb
    target_name TEXT NOT NULL,
    destination TEXT NOT NULL,
    options     TEXT NOT NULL,        -- JSON: the request's options (LocalAet, MoveOriginatorAet, ...)
    retry       INTEGER NOT NULL,     -- 0: one attempt (a caller waits for the answer)
    content     TEXT NOT NULL,        -- JSON: the plan's summary
    created     REAL NOT NULL
);
"""
# where an outbox made before the queue kept batches held its rows' jobs: moved into the queue at open
OLD_ITEMS = "export_items"


@dataclass(frozen=True)
class Item:
    """One instance of a planned export, as the queue needs it."""

    instance: str  # Orthanc instance ID
    received: str  # Orthanc's ReceptionDate metadata
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    action: str  # protect | pass
    rule: str
    recipients: tuple[str, ...] = ()
    profile: str | None = None
    lesion_source: bool = False  # a SEG / RTSTRUCT on a protect route: goes unchanged


@dataclass(frozen=True)
class ExportJob:
    id: str
    kind: str
    description: str
    target_kind: str
    target_name: str
    destination: str
    options: dict
    retry: bool
    content: dict
    created: float


class Outbox:
    def __init__(self, path: str | Path):
        self.queue = Queue(path, schema=SCHEMA)  # one database: the queue's rows and the export jobs
        self.path = self.queue.path
        self._move_old_items()

    def _move_old_items(self) -> None:
        if not self.queue.read_own("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (OLD_ITEMS,)):
            return
        with self.queue.transaction(durable=True) as tx:
            for row_id, job_id, received in tx.execute_own(f"SELECT row_id, job_id, received FROM {OLD_ITEMS}"):
                tx.assign(row_id, job_id, received)
            tx.execute_own(f"DROP TABLE {OLD_ITEMS}")

    # ------------------------------------------------------------------------------------- writing
    def add_job(self, *, kind: str, description: str, target: tuple[str, str], destination: str,
                calling_ae: str, called_ae: str | None, items: list[Item], options: dict | None = None,
                retry: bool = True, content: dict | None = None) -> str:
        """Queue one export: a job row, and one queue row per item, in one transaction (fsynced)."""
        job_id = JOB_PREFIX + str(uuid.uuid4())
        with self.queue.transaction(durable=True) as tx:
            tx.execute_own("INSERT INTO export_jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (job_id, kind, description, target[0], target[1], destination, json.dumps(options or {}),
                            int(retry), json.dumps(content or {}), tx.now))
            for item in items:
                tx.add(file=item.instance, sop_uid=item.sop_uid, sop_class=item.sop_class,
                       transfer_syntax=item.transfer_syntax, study_uid=item.study_uid, series_uid=item.series_uid,
                       calling_ae=calling_ae, called_ae=called_ae or "", destination=destination,
                       action="unchanged" if item.lesion_source else item.action, rule=item.rule,
                       recipients=item.recipients, profile=item.profile,
                       deid=None,  # delivery decides from the rules in force at send time
                       batch=job_id, receipt=item.received)
        return job_id

    def note(self, job_id: str, *, add: dict[str, int] | None = None, union: dict[str, list] | None = None) -> None:
        """Merge delivery facts into the job's content: counts added, UID lists united."""
        with self.queue.transaction() as tx:
            row = tx.execute_own("SELECT content FROM export_jobs WHERE id=?", (job_id,)).fetchone()
            content = json.loads(row[0]) if row else {}
            for key, n in (add or {}).items():
                content[key] = content.get(key, 0) + n
            for key, values in (union or {}).items():
                content[key] = sorted(set(content.get(key, [])) | set(values))
            tx.execute_own("UPDATE export_jobs SET content=? WHERE id=?", (json.dumps(content), job_id))

    # ------------------------------------------------------------------ protected copies in flight
    def inflight_path(self, row_id: int) -> Path:
        """Where a protected object waits from its protection until its delivery is committed: after a
        crash or a failed attempt the same object (same protected UID) is sent again, not a new one."""
        return self.path.parent / "inflight" / f"{row_id}.dcm"

    def keep_inflight(self, row_id: int, data: bytes) -> None:
        """Whole or absent even after kill -9 or power loss (fsynced), 0600 in a 0700 folder: the gateway's
        at-rest rule for what may hold patient data."""
        write_private(data, self.inflight_path(row_id))

    def inflight(self, row_id: int) -> bytes | None:
        try:
            return self.inflight_path(row_id).read_bytes()
        except OSError:
            return None

    def drop_inflight(self, row_id: int) -> None:
        self.inflight_path(row_id).unlink(missing_ok=True)

    # the queue's own state changes (one commit each)
    def mark_done(self, row_id: int, sent_sop_uid: str | None = None) -> None:
        self.queue.mark_done(row_id, sent_sop_uid)
        self.drop_inflight(row_id)

    def mark_failed(self, row: Row, error: str, *, max_attempts: int, base_s: float, max_s: float,
                    permanent: bool = False) -> str:
        state = self.queue.mark_failed(row, error, max_attempts=max_attempts, base_s=base_s, max_s=max_s,
                                       permanent=permanent)
        if state == "dead":
            self.drop_inflight(row.id)
        return state

    def mark_quarantined(self, row_id: int, reason: str) -> None:
        self.queue.mark_quarantined(row_id, reason)
        self.drop_inflight(row_id)

    # ------------------------------------------------------------------------------------- reading
    def queued(self, instance: str, destination: str, received: str) -> bool:
        """Is this receipt of the instance already queued for (or delivered to) this destination
        by an auto-export? (Quarantined rows count: they are not tried again.)"""
        batches = self.queue.batches_holding(instance, destination, received)
        if not batches:
            return False
        marks = ",".join("?" * len(batches))
        return bool(self.queue.read_own(f"SELECT 1 FROM export_jobs WHERE id IN ({marks})"
                                        " AND kind='MiadmarkAutoExport' LIMIT 1", batches))

    def due(self, limit: int, now: float | None = None) -> list[tuple[str, list[Row]]]:
        """Rows whose time has come, grouped by export job (oldest job first, rows in queue order)."""
        groups: dict[str, list[Row]] = {}
        for row in self.queue.due(None, limit, now):
            if row.batch is not None:
                groups.setdefault(row.batch, []).append(row)
        return list(groups.items())

    def next_due_time(self) -> float | None:
        return self.queue.next_due_time()

    def job(self, job_id: str) -> ExportJob | None:
        rows = self.queue.read_own("SELECT * FROM export_jobs WHERE id=?", (job_id,))
        if not rows:
            return None
        r = rows[0]
        return ExportJob(r["id"], r["kind"], r["description"], r["target_kind"], r["target_name"], r["destination"],
                         json.loads(r["options"]), bool(r["retry"]), json.loads(r["content"]), r["created"])

    def job_ids(self, limit: int = 100) -> list[str]:
        return [r[0] for r in self.queue.read_own("SELECT id FROM export_jobs ORDER BY created DESC LIMIT ?",
                                                  (limit,))]

    def progress(self, job_id: str) -> dict:
        """Counts of the job's rows (dicomnet.queue.Queue.batch_progress)."""
        return self.queue.batch_progress(job_id)

    def status(self) -> list[dict]:
        """Per destination (the queue's status) plus `retrying`: pending rows tried before."""
        retries = self.queue.retries()
        out = []
        for entry in self.queue.status():
            n = retries.get(entry["destination"], (0, 0))[0]
            out.append({**entry, "pending": entry["pending"] - n, "retrying": n})
        return out

    def dead_letters(self, limit: int = 20) -> list[dict]:
        return [{"Row": r["id"], "Instance": r["file"], "SOPInstanceUID": r["sop_uid"],
                 "Destination": r["destination"], "State": r["state"], "Attempts": r["attempts"],
                 "Reason": r["last_error"], "Job": r["batch"]}
                for r in self.queue.failures(limit) if r["batch"] is not None]

    def retry_dead(self, destination: str | None = None) -> int:
        return self.queue.retry_dead(destination)

    def close(self) -> None:
        self.queue.close()


__all__ = ["Outbox", "Item", "ExportJob", "Row", "JOB_PREFIX"]
