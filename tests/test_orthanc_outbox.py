"""The plugin's durable outbox without Orthanc: jobs, dedupe per receipt, retry, dead letter, copies in flight."""

from __future__ import annotations

import subprocess
import sys

from orthanc_plugin.jobs import summary
from orthanc_plugin.outbox import Item, Outbox

RETRY = {"max_attempts": 2, "base_s": 0.01, "max_s": 0.02}


def _items(n: int, received: str = "20261130T100000") -> list[Item]:
    return [Item(f"orthanc-{k}", received, f"1.2.3.{k}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                 "1.2.3", "1.2.3.0", "protect", "rule 1") for k in range(n)]


def _job(outbox: Outbox, items, kind="MiadmarkAutoExport", retry=True) -> str:
    return outbox.add_job(kind=kind, description="test", target=("modality", "partner"), destination="partner",
                          calling_ae="HOSPITAL", called_ae="PARTNER", items=items, retry=retry)


def test_a_job_is_what_its_rows_say_and_survives_a_new_process(tmp_path):
    outbox = Outbox(tmp_path / "exports.sqlite")
    job = _job(outbox, _items(3))
    [(due_job, rows)] = outbox.due(10)
    assert due_job == job and [r.sop_uid for r in rows] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    outbox.mark_done(rows[0].id, "2.25.1")
    assert outbox.mark_failed(rows[1], "C-STORE answered 0xA700", **RETRY) == "pending"
    state = summary(outbox.job(job), outbox.progress(job))
    assert state["State"] == "Running" and state["DoneCount"] == 1 and state["RetryingCount"] == 1
    assert outbox.status()[0]["retrying"] == 1 and outbox.status()[0]["pending"] == 1
    # another process (Orthanc restarted) reads the same state
    code = ("import sys; from orthanc_plugin.outbox import Outbox; from orthanc_plugin.jobs import summary;"
            f"o = Outbox(sys.argv[1]); p = o.progress({job!r}); print(p['done'], p['retrying'], p['pending'])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "exports.sqlite")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]


def test_dead_letter_after_the_last_attempt_and_one_attempt_when_a_caller_waits(tmp_path):
    outbox = Outbox(tmp_path / "exports.sqlite")
    job = _job(outbox, _items(1))
    row = outbox.due(10)[0][1][0]
    assert outbox.mark_failed(row, "no association with PARTNER", **RETRY) == "pending"
    row = outbox.due(10, now=1e12)[0][1][0]
    assert outbox.mark_failed(row, "no association with PARTNER", **RETRY) == "dead"
    state = summary(outbox.job(job), outbox.progress(job))
    assert state["State"] == "Failure" and "PARTNER" in state["ErrorDescription"]
    [letter] = outbox.dead_letters()
    assert letter["Attempts"] == 2 and letter["Job"] == job and "PARTNER" in letter["Reason"]
    assert outbox.retry_dead("partner") == 1 and outbox.due(10)


def test_a_receipt_is_queued_once_and_a_new_receipt_again(tmp_path):
    outbox = Outbox(tmp_path / "exports.sqlite")
    _job(outbox, _items(2))
    assert outbox.queued("orthanc-0", "partner", "20261130T100000")
    assert not outbox.queued("orthanc-0", "partner", "20261130T110000")  # deleted and received again
    assert not outbox.queued("orthanc-0", "elsewhere", "20261130T100000")
    other = Outbox(tmp_path / "manual.sqlite")
    _job(other, _items(1), kind="MiadmarkExport")
    assert not other.queued("orthanc-0", "partner", "20261130T100000")  # a manual export is no auto-export


def test_a_protected_copy_stays_in_flight_until_its_delivery_is_committed(tmp_path):
    outbox = Outbox(tmp_path / "exports.sqlite")
    _job(outbox, _items(2))
    first, second = outbox.due(10)[0][1]
    outbox.keep_inflight(first.id, b"protected-1")
    outbox.keep_inflight(second.id, b"protected-2")
    assert Outbox(tmp_path / "exports.sqlite").inflight(first.id) == b"protected-1"  # after a restart
    outbox.mark_done(first.id, "2.25.7")
    assert outbox.inflight(first.id) is None
    outbox.mark_quarantined(second.id, "blocked by the rules now in force")
    assert outbox.inflight(second.id) is None


def test_an_outbox_made_with_export_items_keeps_its_jobs_after_the_upgrade(tmp_path):
    """Outboxes written before the queue kept batches grouped rows in an export_items table: their rows
    are moved into the queue's batches at open, so pending exports still run and count."""
    import sqlite3
    path = tmp_path / "exports.sqlite"
    outbox = Outbox(path)
    job = _job(outbox, _items(2))
    outbox.close()
    con = sqlite3.connect(path)  # the older layout: batch kept beside the queue, not in it
    con.executescript("CREATE TABLE export_items (row_id INTEGER PRIMARY KEY, job_id TEXT NOT NULL,"
                      " received TEXT NOT NULL);"
                      "INSERT INTO export_items SELECT id, batch, receipt FROM jobs;"
                      "UPDATE jobs SET batch=NULL, receipt=NULL;")
    con.commit()
    con.close()
    outbox = Outbox(path)
    [(due_job, rows)] = outbox.due(10)
    assert due_job == job and len(rows) == 2
    assert outbox.queued("orthanc-0", "partner", "20261130T100000")
    assert outbox.progress(job)["pending"] == 2


def test_a_copy_in_flight_is_private_and_whole(tmp_path):
    """Protected objects waiting for delivery are kept as the gateway keeps its spool: 0600 files in a
    0700 folder, written durably (temp, fsync, rename)."""
    import stat

    outbox = Outbox(tmp_path / "exports.sqlite")
    outbox.keep_inflight(7, b"protected bytes")
    path = outbox.inflight_path(7)
    assert outbox.inflight(7) == b"protected bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["7.dcm"]  # no temp file left behind
    outbox.drop_inflight(7)
    assert outbox.inflight(7) is None
