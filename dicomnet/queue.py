"""The durable work queue shared by the gateway and the Orthanc plugin: one SQLite database (WAL).

One row per (received instance, destination). States:
    pending      waiting to be sent (next_try says when)
    done         delivered (the destination answered success or warning)
    dead         gave up after retry.max_attempts (dead letter; `miadmark queue retry` re-queues)
    quarantined  could not be protected; never sent (reason in last_error and the quarantine folder)

Commits use synchronous=NORMAL (WAL): a killed process loses nothing (the OS has the WAL); power
loss can lose the last commits, which costs nothing either: the gateway's spool file is the durable
record of a receipt (Gateway.recover re-queues files without a row), and a lost 'done' only means
one harmless repeated delivery. add(durable=True) fsyncs (synchronous=FULL) for callers without one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from miadmark.lesion import LESION_SOP_CLASSES
from miadmark.private import FILE_MODE, private_dir, restrict_file

from .outcome import RetryPolicy, backoff_delay  # noqa: F401 - backoff_delay: the forwarder's import

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    file         TEXT NOT NULL,        -- spooled original, relative to the spool folder
    sop_uid      TEXT NOT NULL,
    sop_class    TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid    TEXT NOT NULL,
    series_uid   TEXT NOT NULL,
    calling_ae   TEXT NOT NULL,
    called_ae    TEXT NOT NULL,
    destination  TEXT NOT NULL,
    action       TEXT NOT NULL,        -- protect | pass
    rule         TEXT NOT NULL,        -- rule label for logs and audit
    recipients   TEXT NOT NULL,        -- JSON list of certificate paths (protect)
    profile      TEXT,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try     REAL NOT NULL,
    last_error   TEXT,
    sent_sop_uid TEXT,                 -- what went out (the protected object's new UID)
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    deid         TEXT,                 -- JSON de-identification options (DeidOptions); NULL: queued before
                                       -- they were recorded (the forwarder decides them again, or does not send)
    lesion_source INTEGER NOT NULL DEFAULT 0,  -- a SEG / RTSTRUCT, decided once on arrival (lesion_source_class)
    batch        TEXT,                 -- the caller's group of rows (the plugin's export job); NULL: none
    receipt      TEXT                  -- the caller's stamp of this receipt (Orthanc's ReceptionDate)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (destination, state, next_try);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (destination, study_uid, state);
CREATE INDEX IF NOT EXISTS jobs_study_class ON jobs (study_uid, sop_class);  -- lesion sources of a study
CREATE INDEX IF NOT EXISTS jobs_file ON jobs (file);  -- releasing a spool file
CREATE INDEX IF NOT EXISTS jobs_lesion ON jobs (sop_class, created);  -- sweeping kept lesion sources
"""

# columns added after the first release: (name, type) added to an older database at open
ADDED_COLUMNS = (("deid", "TEXT"), ("lesion_source", "INTEGER NOT NULL DEFAULT 0"), ("batch", "TEXT"),
                 ("receipt", "TEXT"))
# indexes on added columns: made after the columns exist
INDEXES = "CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch);"  # one export job's rows

STATES = ("pending", "done", "dead", "quarantined")
# A SEG / RTSTRUCT is kept in the spool this long after its receipt (and while images of its study
# wait), so that images of its study received after it was forwarded still get its mask.
LESION_KEEP_S = 3600.0


def lesion_source_class(sop_class: str) -> bool:
    """A SEG / RTSTRUCT by SOP class: forwarded unchanged and a source of lesion masks. The one answer
    the queue records on arrival. (One that says SEG / RTSTRUCT only by Modality is no lesion source
    here: protection refuses it with miadmark.lesion.is_lesion_source, as before.)"""
    return str(sop_class) in LESION_SOP_CLASSES


FILE_BUSY = "SELECT COUNT(*) FROM jobs WHERE file=? AND state IN ('pending','dead')"


def _insert_row(con: sqlite3.Connection, *, file: str, sop_uid: str, sop_class: str, transfer_syntax: str,
                study_uid: str, series_uid: str, calling_ae: str, called_ae: str, destination: str, action: str,
                rule: str, recipients, profile: str | None, deid: str | None, now: float,
                batch: str | None = None, receipt: str | None = None) -> int:
    """One row of the jobs table, inside the caller's transaction: the one INSERT every writer (the
    gateway's receipt, the Orthanc plugin's outbox) goes through, so each sets every column. deid: the
    rule's de-identification options as JSON, or None (decided from the rules in force at send time)."""
    cur = con.execute(
        "INSERT INTO jobs (file, sop_uid, sop_class, transfer_syntax, study_uid, series_uid, calling_ae,"
        " called_ae, destination, action, rule, recipients, profile, deid, lesion_source, next_try,"
        " created, updated, batch, receipt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (file, sop_uid, sop_class, transfer_syntax, study_uid, series_uid, calling_ae, called_ae, destination,
         action, rule, json.dumps([str(r) for r in recipients]), profile, deid,
         int(lesion_source_class(sop_class)),  # decided once, here; every later step reads the row
         now, now, now, batch, receipt))
    return cur.lastrowid


class Transaction:
    """One write transaction of the queue, open inside Queue.transaction(): queue rows through add(),
    the caller's own tables (Queue(schema=...)) through execute_own(); one commit covers both."""

    def __init__(self, con: sqlite3.Connection, now: float):
        self._con = con
        self.now = now

    def add(self, **row) -> int:
        """One queue row (the columns of _insert_row but `now`); returns its id."""
        return _insert_row(self._con, now=self.now, **row)

    def hold_study(self, destination: str, study_uid: str, until: float) -> None:
        """The study's untried protect rows for this destination wait until `until` (study settle)."""
        self._con.execute("UPDATE jobs SET next_try=? WHERE destination=? AND study_uid=? AND action='protect'"
                          " AND state='pending' AND attempts=0 AND next_try<?", (until, destination, study_uid, until))

    def assign(self, row_id: int, batch: str, receipt: str | None) -> None:
        """Put an existing row into a batch (moving an older caller's grouping into the queue)."""
        self._con.execute("UPDATE jobs SET batch=?, receipt=? WHERE id=?", (batch, receipt, row_id))

    def execute_own(self, sql: str, args=()) -> sqlite3.Cursor:
        """SQL on the caller's own tables, never on jobs (the queue's methods are its interface)."""
        return self._con.execute(sql, args)


@dataclass(frozen=True)
class DeidOptions:
    """A protect rule's de-identification options (miadmark.config.Rule), as protect_many takes them."""
    deidentify: str | None = None  # None: not de-identified
    restore_identity: bool = False
    deidentify_dates: str = "remove"

    @classmethod
    def of(cls, decision) -> "DeidOptions":
        return cls(decision.deidentify, decision.restore_identity, decision.deidentify_dates)

    @classmethod
    def from_json(cls, text: str | None) -> "DeidOptions | None":
        """None when not recorded or not readable: the forwarder then decides again (fail closed)."""
        try:
            return None if text is None else cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(self.protect_options(), sort_keys=True)

    def protect_options(self) -> dict:
        return {"deidentify": self.deidentify, "restore_identity": self.restore_identity,
                "deidentify_dates": self.deidentify_dates}


@dataclass(frozen=True)
class Job:
    id: int
    file: str
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    calling_ae: str
    called_ae: str
    destination: str
    action: str
    rule: str
    recipients: tuple[str, ...]
    profile: str | None
    attempts: int
    deid: DeidOptions | None = None  # None: not recorded (queued by an older gateway)
    lesion_source: bool = False  # a SEG / RTSTRUCT (recorded on arrival: lesion_source_class)
    batch: str | None = None  # the caller's group of rows (the plugin's export job)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(row["id"], row["file"], row["sop_uid"], row["sop_class"], row["transfer_syntax"],
                   row["study_uid"], row["series_uid"], row["calling_ae"], row["called_ae"],
                   row["destination"], row["action"], row["rule"], tuple(json.loads(row["recipients"])),
                   row["profile"], row["attempts"], DeidOptions.from_json(row["deid"]), bool(row["lesion_source"]),
                   row["batch"])


@dataclass(frozen=True)
class NewJob:
    destination: str
    action: str
    rule: str
    recipients: tuple[str, ...] = ()
    profile: str | None = None
    deid: DeidOptions = DeidOptions()

    @classmethod
    def of(cls, decision) -> "NewJob":
        """The job a rules decision (miadmark.rules.Decision) for one destination makes."""
        return cls(decision.destinations[0], decision.action, decision.rule_label,
                   tuple(str(p) for p in decision.recipients), decision.profile, DeidOptions.of(decision))


class Queue:
    """Thread-safe: one connection per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: str | Path, schema: str = ""):
        """schema: the caller's own tables (CREATE ... IF NOT EXISTS), kept in the same database so one
        transaction (transaction()) covers a caller's row and its queue rows."""
        self.path = Path(path)
        private_dir(self.path.parent)
        # 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database file's mode
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        restrict_file(self.path)
        self._local = threading.local()
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        con.commit()
        self._migrate(con)
        con.executescript(INDEXES + schema)
        con.commit()

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        """Add the columns a database made by an older gateway lacks (the gateway and its forwarding
        process may open it at once: checked again inside the write transaction)."""
        def missing() -> list[tuple[str, str]]:
            have = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
            return [(n, t) for n, t in ADDED_COLUMNS if n not in have]
        if not missing():
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            for name, kind in missing():
                con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                if name == "lesion_source":  # rows queued before it was recorded: the same answer, from their class
                    con.execute("UPDATE jobs SET lesion_source=1 WHERE sop_class IN (?,?)", LESION_SOP_CLASSES)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self, durable: bool = False) -> Iterator[Transaction]:
        """One write transaction (fsynced when durable): committed when the block ends, rolled back
        when it raises."""
        con = self._con()
        if durable:
            con.execute("PRAGMA synchronous=FULL")
        try:
            con.execute("BEGIN IMMEDIATE")
            yield Transaction(con, time.time())
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            if durable:
                con.execute("PRAGMA synchronous=NORMAL")

    def read_own(self, sql: str, args=()) -> list[sqlite3.Row]:
        """A read of the caller's own tables (Queue(schema=...)), never of jobs."""
        return self._con().execute(sql, args).fetchall()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ------------------------------------------------------------------------------------ receipt
    def add(self, *, file: str, sop_uid: str, sop_class: str, transfer_syntax: str, study_uid: str,
            series_uid: str, calling_ae: str, called_ae: str, jobs: list[NewJob],
            durable: bool = False, settle_s: float = 0.0) -> list[int]:
        """Queue one instance for its destinations (fsynced when durable). With settle_s, its protect
        jobs and the untried protect jobs of its study for the same destinations wait until the study
        has received nothing for settle_s (a study-settle window for late SEG / RTSTRUCT)."""
        ids = []
        with self.transaction(durable) as tx:
            now = tx.now
            for job in jobs:
                ids.append(tx.add(file=file, sop_uid=sop_uid, sop_class=sop_class, transfer_syntax=transfer_syntax,
                                  study_uid=study_uid, series_uid=series_uid, calling_ae=calling_ae,
                                  called_ae=called_ae, destination=job.destination, action=job.action,
                                  rule=job.rule, recipients=job.recipients, profile=job.profile,
                                  deid=job.deid.to_json()))
                if settle_s > 0 and job.action == "protect":
                    tx.hold_study(job.destination, study_uid, now + settle_s)
        return ids

    # ----------------------------------------------------------------------------------- progress
    def due(self, destination: str | None, limit: int, now: float | None = None) -> list[Job]:
        """Pending rows whose time has come, in queue order (destination None: every destination)."""
        now = time.time() if now is None else now
        where, args = ("", ()) if destination is None else ("destination=? AND ", (destination,))
        rows = self._con().execute(
            f"SELECT * FROM jobs WHERE {where}state='pending' AND next_try<=? ORDER BY id LIMIT ?",
            (*args, now, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def next_due_time(self, destination: str | None = None) -> float | None:
        where, args = ("", ()) if destination is None else ("destination=? AND ", (destination,))
        row = self._con().execute(f"SELECT MIN(next_try) FROM jobs WHERE {where}state='pending'", args).fetchone()
        return row[0]

    def mark_done(self, job_id: int, sent_sop_uid: str | None = None) -> None:
        self._con().execute("UPDATE jobs SET state='done', sent_sop_uid=?, last_error=NULL, updated=? WHERE id=?",
                            (sent_sop_uid, time.time(), job_id))

    def mark_failed(self, job: Job, error: str, *, max_attempts: int, base_s: float, max_s: float,
                    permanent: bool = False) -> str:
        """Count a failed attempt under the retry policy (dicomnet.outcome.RetryPolicy: these three
        limits); returns the new state ('pending' with a backoff, or 'dead': after max_attempts, or at
        once for a permanent failure, which no retry can cure)."""
        policy = RetryPolicy(max_attempts, base_s, max_s)
        attempts = job.attempts + 1
        now = time.time()
        state = policy.state_after(attempts, permanent)
        next_try = now + policy.delay(attempts)
        self._con().execute("UPDATE jobs SET state=?, attempts=?, next_try=?, last_error=?, updated=? WHERE id=?",
                            (state, attempts, next_try, error[:500], now, job.id))
        return state

    def mark_quarantined(self, job_id: int, reason: str) -> None:
        self._con().execute("UPDATE jobs SET state='quarantined', last_error=?, updated=? WHERE id=?",
                            (reason[:500], time.time(), job_id))

    def retry_dead(self, destination: str | None = None) -> int:
        sql = "UPDATE jobs SET state='pending', attempts=0, next_try=?, updated=? WHERE state='dead'"
        args: list = [time.time(), time.time()]
        if destination:
            sql += " AND destination=?"
            args.append(destination)
        return self._con().execute(sql, args).rowcount

    def purge(self, older_than_s: float) -> int:
        """Forget finished rows (done, quarantined) older than this; the audit log keeps the history."""
        return self._con().execute("DELETE FROM jobs WHERE state IN ('done','quarantined') AND updated<?",
                                   (time.time() - older_than_s,)).rowcount

    def files(self) -> set[str]:
        """Every file (spool path, or the plugin's Orthanc instance ID) some row names, whatever its state."""
        return {r[0] for r in self._con().execute("SELECT DISTINCT file FROM jobs")}

    def pending_in_study(self, destination: str, study_uid: str) -> int:
        return self._con().execute(
            "SELECT COUNT(*) FROM jobs WHERE destination=? AND study_uid=? AND state='pending'",
            (destination, study_uid)).fetchone()[0]

    # ---------------------------------------------------------------------------- lesion sources
    def lesion_sources(self, study_uids: set[str]) -> list[tuple[str, str]]:
        """(spool file, SOP Instance UID) of every SEG / RTSTRUCT received for these studies,
        whatever its destination or state (its file may already be released)."""
        if not study_uids:
            return []
        marks = ",".join("?" * len(study_uids))
        rows = self._con().execute(
            f"SELECT DISTINCT file, sop_uid FROM jobs WHERE study_uid IN ({marks}) AND lesion_source"
            " ORDER BY file", sorted(study_uids)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def images_sent_before(self, job_id: int) -> int:
        """Images of this lesion-source job's study and destination already delivered, protected,
        before the lesion source was received: their watermark could not avoid its lesions."""
        return self._con().execute(
            "SELECT COUNT(*) FROM jobs i JOIN jobs s ON s.id=? WHERE i.destination=s.destination"
            " AND i.study_uid=s.study_uid AND i.action='protect' AND i.state='done' AND NOT i.lesion_source"
            " AND i.updated<s.created", (job_id,)).fetchone()[0]

    def releasable(self, rel: str, now: float | None = None) -> list[str]:
        """The spool files no job needs once `rel`'s job has finished: `rel` unless a pending or dead
        job still needs it, or it is a SEG / RTSTRUCT still kept for images of its study
        (expired_lesion_sources); an image's release also releases its study's expired ones."""
        con = self._con()
        if con.execute(FILE_BUSY, (rel,)).fetchone()[0]:
            return []
        row = con.execute("SELECT study_uid, lesion_source FROM jobs WHERE file=? LIMIT 1", (rel,)).fetchone()
        if row is None:
            return [rel]
        expired = self.expired_lesion_sources(row[0], now)
        return expired if row[1] else [rel, *expired]

    def expired_lesion_sources(self, study_uid: str, now: float | None = None) -> list[str]:
        """The study's SEG / RTSTRUCT files no image needs any more: none of their own jobs waits,
        they came more than LESION_KEEP_S ago, and no image of the study waits (pending or dead)."""
        now = time.time() if now is None else now
        con = self._con()
        files = [r[0] for r in con.execute(
            "SELECT file FROM jobs WHERE study_uid=? AND lesion_source GROUP BY file"
            " HAVING SUM(state IN ('pending','dead'))=0 AND MIN(created)<?",
            (study_uid, now - LESION_KEEP_S))]
        if files and con.execute("SELECT EXISTS (SELECT 1 FROM jobs WHERE study_uid=? AND NOT lesion_source"
                                 " AND state IN ('pending','dead'))", (study_uid,)).fetchone()[0]:
            return []
        return files

    def lesion_studies(self, since: float, until: float) -> list[str]:
        """Studies with a SEG / RTSTRUCT received in [since, until)."""
        rows = self._con().execute("SELECT DISTINCT study_uid FROM jobs WHERE lesion_source"
                                   " AND created>=? AND created<?", (since, until)).fetchall()
        return [r[0] for r in rows]

    # -------------------------------------------------------------------------------------- batches
    def batches_holding(self, file: str, destination: str, receipt: str) -> list[str]:
        """The batches with a row for this receipt of `file` to this destination (any state)."""
        return [r[0] for r in self._con().execute(
            "SELECT DISTINCT batch FROM jobs WHERE file=? AND destination=? AND receipt=? AND batch IS NOT NULL",
            (file, destination, receipt))]

    def batch_progress(self, batch: str) -> dict:
        """Counts of the batch's rows: pending (never tried), retrying, done, dead, quarantined; what was
        sent by action; the times of the first and last change; the reasons of the failures (up to 20,
        as 'SOP UID (state): reason'); the next retry."""
        con = self._con()
        counts = {"pending": 0, "retrying": 0, "done": 0, "dead": 0, "quarantined": 0}
        sent = {"protect": 0, "pass": 0, "unchanged": 0}
        for state, tried, action, n in con.execute(
                "SELECT state, attempts>0, action, COUNT(*) FROM jobs WHERE batch=? GROUP BY state, attempts>0, action",
                (batch,)):
            counts["retrying" if state == "pending" and tried else state] += n
            if state == "done":
                sent[action] = sent.get(action, 0) + n
        first, last = con.execute("SELECT MIN(updated), MAX(updated) FROM jobs WHERE batch=?"
                                  " AND (attempts>0 OR state!='pending')", (batch,)).fetchone()
        errors = [f"{r[0]} ({r[1]}): {r[2]}" for r in con.execute(
            "SELECT sop_uid, state, last_error FROM jobs WHERE batch=? AND last_error IS NOT NULL"
            " ORDER BY updated DESC LIMIT 20", (batch,))]
        next_try = con.execute("SELECT MIN(next_try) FROM jobs WHERE batch=? AND state='pending' AND attempts>0",
                               (batch,)).fetchone()[0]
        return {**counts, "sent": sent, "first_update": first, "last_update": last, "errors": errors,
                "next_try": next_try}

    def failures(self, limit: int = 20) -> list[dict]:
        """The latest dead-lettered and quarantined rows, newest first."""
        rows = self._con().execute(
            "SELECT id, file, sop_uid, destination, state, attempts, last_error, batch FROM jobs"
            " WHERE state IN ('dead','quarantined') ORDER BY updated DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    # -------------------------------------------------------------------------------------- status
    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self._con().execute("SELECT destination, state, COUNT(*) FROM jobs GROUP BY destination, state"):
            out.setdefault(row[0], {s: 0 for s in STATES})[row[1]] = row[2]
        return out

    def retries(self) -> dict[str, tuple[int, int]]:
        """Per destination: (pending jobs already tried at least once, failed attempts among them)."""
        rows = self._con().execute("SELECT destination, COUNT(*), SUM(attempts) FROM jobs WHERE state='pending'"
                                   " AND attempts>0 GROUP BY destination")
        return {r[0]: (r[1], r[2]) for r in rows}

    def done_since(self, since: float) -> dict[str, tuple[int, float]]:
        """Per destination: (entries delivered since this time, time of the first of them): a rate."""
        rows = self._con().execute("SELECT destination, COUNT(*), MIN(updated) FROM jobs WHERE state='done'"
                                   " AND updated>=? GROUP BY destination", (since,))
        return {r[0]: (r[1], r[2]) for r in rows}

    def status(self) -> list[dict]:
        """Per destination: counts by state, oldest pending age, next try, last error."""
        now = time.time()
        out = []
        for dest, counts in sorted(self.counts().items()):
            con = self._con()
            oldest, next_try = con.execute(
                "SELECT MIN(created), MIN(next_try) FROM jobs WHERE destination=? AND state='pending'",
                (dest,)).fetchone()
            err = con.execute("SELECT last_error FROM jobs WHERE destination=? AND last_error IS NOT NULL"
                              " ORDER BY updated DESC LIMIT 1", (dest,)).fetchone()
            out.append({"destination": dest, **counts,
                        "oldest_pending_s": round(now - oldest, 1) if oldest else None,
                        "next_try_in_s": round(max(0.0, next_try - now), 1) if next_try else None,
                        "last_error": err[0] if err else None})
        return out
