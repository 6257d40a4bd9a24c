"""The plugin's durable exports: the gateway's work queue plus the export jobs that group its rows.

One SQLite database (WAL) per Orthanc, by default <StorageDirectory>/miadmark/exports.sqlite:
  jobs         dicomnet.queue.Queue, unchanged: one row per (instance, destination), states
               pending / done / dead / quarantined, attempts, next_try with backoff, last_error.
               Here `file` is the Orthanc instance ID (Orthanc holds the original) and
               `sent_sop_uid` the SOP Instance UID that left.
  export_jobs  one row per export the plugin accepted (REST route, Explorer, C-MOVE, auto-export):
               its target, its request options and whether failures are retried.
  export_items which queue rows belong to which export job, and the instance's ReceptionDate when
               it was queued (a study deleted and received again is a new receipt: exported again).

A job's counts and state are read from its rows, so they are what was delivered, and survive a
restart (kill -9 included: every state change is a commit before the next step). No Orthanc
import here: unit-testable.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicomnet.queue import Job as Row
from dicomnet.queue import Queue, insert_row

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
CREATE TABLE IF NOT EXISTS export_items (
    row_id      INTEGER PRIMARY KEY,  -- jobs.id of the queue
    job_id      TEXT NOT NULL,
    received    TEXT NOT NULL         -- the instance's ReceptionDate when queued
);
CREATE INDEX IF NOT EXISTS export_items_job ON export_items (job_id);
"""


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
        self.queue = Queue(path)  # creates the file and the gateway's schema
        self.path = self.queue.path
        self._con().executescript(SCHEMA)

    def _con(self):
        return self.queue._con()  # same connection per thread: one transaction covers both tables

    # ------------------------------------------------------------------------------------- writing
    def add_job(self, *, kind: str, description: str, target: tuple[str, str], destination: str,
                calling_ae: str, called_ae: str | None, items: list[Item], options: dict | None = None,
                retry: bool = True, content: dict | None = None) -> str:
        """Queue one export: a job row, and one queue row per item, in one transaction (fsynced)."""
        con = self._con()
        job_id = JOB_PREFIX + str(uuid.uuid4())
        now = time.time()
        con.execute("PRAGMA synchronous=FULL")
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO export_jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (job_id, kind, description, target[0], target[1], destination, json.dumps(options or {}),
                         int(retry), json.dumps(content or {}), now))
            for item in items:
                row_id = insert_row(con, file=item.instance, sop_uid=item.sop_uid, sop_class=item.sop_class,
                                    transfer_syntax=item.transfer_syntax, study_uid=item.study_uid,
                                    series_uid=item.series_uid, calling_ae=calling_ae, called_ae=called_ae or "",
                                    destination=destination,
                                    action="unchanged" if item.lesion_source else item.action, rule=item.rule,
                                    recipients=item.recipients, profile=item.profile,
                                    deid=None,  # delivery decides from the rules in force at send time
                                    now=now)
                con.execute("INSERT INTO export_items VALUES (?,?,?)", (row_id, job_id, item.received))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.execute("PRAGMA synchronous=NORMAL")
        return job_id

    def note(self, job_id: str, *, add: dict[str, int] | None = None, union: dict[str, list] | None = None) -> None:
        """Merge delivery facts into the job's content: counts added, UID lists united."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT content FROM export_jobs WHERE id=?", (job_id,)).fetchone()
            content = json.loads(row[0]) if row else {}
            for key, n in (add or {}).items():
                content[key] = content.get(key, 0) + n
            for key, values in (union or {}).items():
                content[key] = sorted(set(content.get(key, [])) | set(values))
            con.execute("UPDATE export_jobs SET content=? WHERE id=?", (json.dumps(content), job_id))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ protected copies in flight
    def inflight_path(self, row_id: int) -> Path:
        """Where a protected object waits from its protection until its delivery is committed: after a
        crash or a failed attempt the same object (same protected UID) is sent again, not a new one."""
        return self.path.parent / "inflight" / f"{row_id}.dcm"

    def keep_inflight(self, row_id: int, data: bytes) -> None:
        path = self.inflight_path(row_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # whole or absent, even after kill -9

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

    def mark_failed(self, row: Row, error: str, *, max_attempts: int, base_s: float, max_s: float) -> str:
        state = self.queue.mark_failed(row, error, max_attempts=max_attempts, base_s=base_s, max_s=max_s)
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
        return self._con().execute(
            "SELECT EXISTS (SELECT 1 FROM jobs q JOIN export_items i ON i.row_id=q.id"
            " JOIN export_jobs j ON j.id=i.job_id WHERE q.file=? AND q.destination=? AND i.received=?"
            " AND j.kind='MiadmarkAutoExport')", (instance, destination, received)).fetchone()[0] == 1

    def due(self, limit: int, now: float | None = None) -> list[tuple[str, list[Row]]]:
        """Rows whose time has come, grouped by export job (oldest job first, rows in queue order)."""
        now = time.time() if now is None else now
        rows = self._con().execute(
            "SELECT q.*, i.job_id FROM jobs q JOIN export_items i ON i.row_id=q.id"
            " WHERE q.state='pending' AND q.next_try<=? ORDER BY q.id LIMIT ?", (now, limit)).fetchall()
        groups: dict[str, list[Row]] = {}
        for r in rows:
            groups.setdefault(r["job_id"], []).append(Row.from_row(r))
        return list(groups.items())

    def next_due_time(self) -> float | None:
        return self._con().execute("SELECT MIN(next_try) FROM jobs WHERE state='pending'").fetchone()[0]

    def job(self, job_id: str) -> ExportJob | None:
        r = self._con().execute("SELECT * FROM export_jobs WHERE id=?", (job_id,)).fetchone()
        if r is None:
            return None
        return ExportJob(r["id"], r["kind"], r["description"], r["target_kind"], r["target_name"], r["destination"],
                         json.loads(r["options"]), bool(r["retry"]), json.loads(r["content"]), r["created"])

    def job_ids(self, limit: int = 100) -> list[str]:
        return [r[0] for r in self._con().execute("SELECT id FROM export_jobs ORDER BY created DESC LIMIT ?",
                                                  (limit,))]

    def progress(self, job_id: str) -> dict:
        """Counts of the job's rows: pending (never tried), retrying, done, dead, quarantined; the
        times of the first and last change; the reasons of the failures (up to 20)."""
        con = self._con()
        counts = {"pending": 0, "retrying": 0, "done": 0, "dead": 0, "quarantined": 0}
        sent = {"protect": 0, "pass": 0, "unchanged": 0}
        for state, tried, action, n in con.execute(
                "SELECT q.state, q.attempts>0, q.action, COUNT(*) FROM jobs q JOIN export_items i ON i.row_id=q.id"
                " WHERE i.job_id=? GROUP BY q.state, q.attempts>0, q.action", (job_id,)):
            key = "retrying" if state == "pending" and tried else state
            counts[key] += n
            if state == "done":
                sent[action] = sent.get(action, 0) + n
        first, last = con.execute("SELECT MIN(q.updated), MAX(q.updated) FROM jobs q JOIN export_items i"
                                  " ON i.row_id=q.id WHERE i.job_id=? AND (q.attempts>0 OR q.state!='pending')",
                                  (job_id,)).fetchone()
        errors = [f"{r[0]} ({r[1]}): {r[2]}" for r in con.execute(
            "SELECT q.sop_uid, q.state, q.last_error FROM jobs q JOIN export_items i ON i.row_id=q.id"
            " WHERE i.job_id=? AND q.last_error IS NOT NULL ORDER BY q.updated DESC LIMIT 20", (job_id,))]
        next_try = con.execute("SELECT MIN(q.next_try) FROM jobs q JOIN export_items i ON i.row_id=q.id"
                               " WHERE i.job_id=? AND q.state='pending' AND q.attempts>0", (job_id,)).fetchone()[0]
        return {**counts, "sent": sent, "first_update": first, "last_update": last, "errors": errors,
                "next_try": next_try}

    def status(self) -> list[dict]:
        """Per destination (the gateway's Queue.status) plus `retrying`: pending rows tried before."""
        retrying = dict(self._con().execute("SELECT destination, COUNT(*) FROM jobs WHERE state='pending'"
                                            " AND attempts>0 GROUP BY destination").fetchall())
        out = []
        for entry in self.queue.status():
            n = retrying.get(entry["destination"], 0)
            out.append({**entry, "pending": entry["pending"] - n, "retrying": n})
        return out

    def dead_letters(self, limit: int = 20) -> list[dict]:
        rows = self._con().execute(
            "SELECT q.id, q.file, q.sop_uid, q.destination, q.state, q.attempts, q.last_error, i.job_id"
            " FROM jobs q JOIN export_items i ON i.row_id=q.id WHERE q.state IN ('dead','quarantined')"
            " ORDER BY q.updated DESC LIMIT ?", (limit,)).fetchall()
        return [{"Row": r[0], "Instance": r[1], "SOPInstanceUID": r[2], "Destination": r[3], "State": r[4],
                 "Attempts": r[5], "Reason": r[6], "Job": r[7]} for r in rows]

    def retry_dead(self, destination: str | None = None) -> int:
        return self.queue.retry_dead(destination)

    def close(self) -> None:
        self.queue.close()


__all__ = ["Outbox", "Item", "ExportJob", "Row", "JOB_PREFIX"]
