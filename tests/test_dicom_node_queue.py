"""The SQLite (WAL) work queue: durable receipt, due order, backoff with jitter, dead letter, status."""

from __future__ import annotations

import random
import sqlite3
import time

from dicomnet.queue import SCHEMA, NewJob, Queue, backoff_delay


def add(q: Queue, sop: str, dests=("a",), study="1.2") -> list[int]:
    return q.add(file=f"objects/{sop}.dcm", sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.2",
                 transfer_syntax="1.2.840.10008.1.2", study_uid=study, series_uid="1.2.3", calling_ae="PACS",
                 called_ae="X", jobs=[NewJob(d, "pass", "rule 1") for d in dests])


def test_wal_and_survives_reopen(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    add(q, "1.1", dests=("a", "b"))
    q.close()
    con = sqlite3.connect(tmp_path / "q.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    q2 = Queue(tmp_path / "q.sqlite")
    assert q2.counts() == {"a": {"pending": 1, "done": 0, "dead": 0, "quarantined": 0},
                           "b": {"pending": 1, "done": 0, "dead": 0, "quarantined": 0}}
    assert [j.sop_uid for j in q2.due("a", 10)] == ["1.1"]


def test_due_in_order_and_done(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    for i in range(5):
        add(q, f"1.{i}")
    jobs = q.due("a", 3)
    assert [j.sop_uid for j in jobs] == ["1.0", "1.1", "1.2"]
    q.mark_done(jobs[0].id, "9.9")
    assert [j.sop_uid for j in q.due("a", 10)] == ["1.1", "1.2", "1.3", "1.4"]
    assert q.pending_in_study("a", "1.2") == 4


def test_backoff_grows_with_jitter_and_cap():
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(1, 10)]
    assert 0.5 <= delays[0] < 1.5 and 4.0 <= delays[3] < 12.0
    assert max(delays) <= 60.0
    assert len({round(backoff_delay(3, 1.0, 60.0, rng), 6) for _ in range(20)}) > 10  # jitter


def test_failure_schedules_retry_then_dead_letter(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    add(q, "1.1")
    for attempt in range(1, 4):
        (job,) = q.due("a", 10, now=time.time() + 1e6)
        state = q.mark_failed(job, "association rejected", max_attempts=3, base_s=10, max_s=100)
        assert state == ("dead" if attempt == 3 else "pending")
        if state == "pending":
            assert q.due("a", 10) == []  # not due before its backoff
            assert q.next_due_time("a") > time.time() + 4
    status = q.status()[0]
    assert status["dead"] == 1 and status["last_error"] == "association rejected"
    assert q.retry_dead("a") == 1
    assert len(q.due("a", 10)) == 1


def test_quarantined_is_never_due(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    (job_id,) = add(q, "1.1")
    q.mark_quarantined(job_id, "protect refused")
    assert q.due("a", 10, now=time.time() + 1e6) == []
    assert q.counts()["a"]["quarantined"] == 1


def test_study_settle_delays_the_untried_protect_jobs_of_that_study_only(tmp_path):
    q = Queue(tmp_path / "q.sqlite")

    def receive(sop, study, action="protect", settle=10.0):
        return q.add(file=f"objects/{sop}.dcm", sop_uid=sop, sop_class="1.2.840.10008.5.1.4.1.1.128",
                     transfer_syntax="1.2.840.10008.1.2", study_uid=study, series_uid="1.2.3", calling_ae="PACS",
                     called_ae="X", jobs=[NewJob("a", action, "rule 1")], settle_s=settle)

    t0 = time.time()
    receive("1.1", "S1")
    receive("2.1", "S2")
    receive("9.1", "S1", action="pass")
    assert [j.sop_uid for j in q.due("a", 10, now=t0 + 1)] == ["9.1"]  # pass jobs never wait
    failed = q.due("a", 10, now=t0 + 11)[0]
    assert failed.sop_uid == "1.1"
    q.mark_failed(failed, "refused", max_attempts=5, base_s=100, max_s=100)  # backing off: left alone
    time.sleep(0.6)
    receive("1.2", "S1")  # a new instance of S1 restarts S1's window, not S2's
    due = {j.sop_uid for j in q.due("a", 10, now=t0 + 10.3)}
    assert "2.1" in due and "1.2" not in due and "1.1" not in due
    assert "1.2" in {j.sop_uid for j in q.due("a", 10, now=time.time() + 10.01)}
    retry = [j for j in q.due("a", 10, now=time.time() + 200) if j.sop_uid == "1.1"]
    assert retry and retry[0].attempts == 1


SEG = "1.2.840.10008.5.1.4.1.1.66.4"
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_a_lesion_source_is_decided_once_on_arrival_and_read_from_the_row(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    for sop, cls in (("1.1", CT), ("1.2", SEG)):
        q.add(file=f"objects/{sop}.dcm", sop_uid=sop, sop_class=cls, transfer_syntax="1.2.840.10008.1.2.1",
              study_uid="9.9", series_uid="9.9.1", calling_ae="PACS", called_ae="X",
              jobs=[NewJob("a", "protect", "rule 1")])
    assert {j.sop_uid: j.lesion_source for j in q.due("a", 10)} == {"1.1": False, "1.2": True}
    assert q.lesion_sources({"9.9"}) == [("objects/1.2.dcm", "1.2")]
    # the row is the answer: what later steps read, not the SOP class again
    q._con().execute("UPDATE jobs SET sop_class=? WHERE sop_uid='1.2'", (CT,))
    assert q.lesion_sources({"9.9"}) == [("objects/1.2.dcm", "1.2")]
    assert q.lesion_studies(0, time.time() + 1) == ["9.9"]


def test_an_older_queue_gets_the_lesion_source_column_filled_from_the_sop_class(tmp_path):
    path = tmp_path / "q.sqlite"
    old_schema = "\n".join(line for line in SCHEMA.splitlines() if "lesion_source" not in line)
    con = sqlite3.connect(path)  # as a gateway before this column wrote it
    con.executescript(old_schema.replace("deid         TEXT,", "deid         TEXT"))
    for sop, cls in (("1.1", CT), ("1.2", SEG)):
        con.execute("INSERT INTO jobs (file, sop_uid, sop_class, transfer_syntax, study_uid, series_uid, calling_ae,"
                    " called_ae, destination, action, rule, recipients, next_try, created, updated)"
                    " VALUES (?,?,?,'1.2.840.10008.1.2.1','9.9','9.9.1','PACS','X','a','pass','r','[]',0,0,0)",
                    (f"objects/{sop}.dcm", sop, cls))
    con.commit()
    con.close()
    q = Queue(path)
    assert {j.sop_uid: j.lesion_source for j in q.due("a", 10)} == {"1.1": False, "1.2": True}
