"""The release's memory: one SQLite row per original instance (WAL, fsynced commits).

States of a row:
    todo     listed, not yet released (or to be tried again)
    pending  prepared: sent_uid is the SOP Instance UID about to be sent; whether it arrived is
             not known until the destination confirms (a crash here is settled by asking it)
    sent     the destination confirmed sent_uid
    skipped  a rule blocked it (reason says which)
    failed   this instance could not be released (reason); tried again by a rerun

A rerun keeps every row: it lists the cohort again, adds what is new, settles `pending` rows with
the destination and releases only `todo` and `failed` rows. The state folder belongs to one
source and one destination; another pair is refused.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .listing import InstanceRef

TODO, PENDING, SENT, SKIPPED, FAILED = "todo", "pending", "sent", "skipped", "failed"

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop TEXT PRIMARY KEY, study TEXT NOT NULL, series TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'todo', action TEXT, sent_uid TEXT, reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, updated REAL);
CREATE INDEX IF NOT EXISTS instances_state ON instances(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StateMismatch(ValueError):
    pass


class Manifest:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "manifest.sqlite"
        self.db = sqlite3.connect(self.path)  # implicit BEGIN before writes; `with self.db` commits
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a confirmed send survives a power cut
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def bind(self, source: str, dest: str) -> None:
        """Tie the folder to one source and destination, or refuse another pair."""
        with self.db:
            for key, value in (("source", source), ("dest", dest)):
                row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                elif row[0] != value:
                    raise StateMismatch(f"state folder {self.folder} belongs to {key} {row[0]!r}, not {value!r}: "
                                        "use another --state for another release")

    def add(self, refs: Iterable[InstanceRef]) -> int:
        """Rows for instances not seen before; returns how many were new."""
        with self.db:
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO instances (sop, study, series, updated) VALUES (?, ?, ?, ?)",
                                [(r.sop, r.study, r.series, time.time()) for r in refs])
            return self.db.total_changes - before

    def in_state(self, *states: str) -> list[tuple[InstanceRef, str | None]]:
        """(ref, sent_uid) of the rows in these states, in (study, series, sop) order."""
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT study, series, sop, sent_uid FROM instances WHERE state IN ({marks}) "
                               "ORDER BY study, series, sop", states).fetchall()
        return [(InstanceRef(study, series, sop), uid) for study, series, sop, uid in rows]

    def record(self, outcomes: Iterable[dict]) -> None:
        """Outcomes from the workers, in one transaction: {sop, state, action?, sent_uid?, reason?}."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "UPDATE instances SET state=:state, action=COALESCE(:action, action), "
                "sent_uid=COALESCE(:sent_uid, sent_uid), reason=:reason, updated=:now, "
                "attempts=attempts + (:state IN ('failed', 'todo')) WHERE sop=:sop",
                [{"action": None, "sent_uid": None, "reason": None, **o, "now": now} for o in outcomes])

    def counts(self) -> Counter:
        return Counter(dict(self.db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()))

    def reasons(self, state: str) -> list[tuple[str, str]]:
        return self.db.execute("SELECT sop, COALESCE(reason, '') FROM instances WHERE state=? ORDER BY sop",
                               (state,)).fetchall()

    def sent_uids(self) -> dict[str, str]:
        """original SOP Instance UID -> SOP Instance UID delivered."""
        return dict(self.db.execute("SELECT sop, sent_uid FROM instances WHERE state='sent'").fetchall())
