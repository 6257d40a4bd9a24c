"""What monitoring costs: the audit hook's counting per record, and a /metrics scrape with a large queue.

Baselines in the same process: an audit write with counting switched off (the hook replaced by a
no-op), and GET /health on the same server (no queue read beyond one write-lock probe).
Run: .venv/bin/python benchmarks/ops_overhead.py [--records 20000] [--queue 20000] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from unittest import mock

from dicom_node.monitoring.server import MonitoringServer
from dicomnet import metrics  # noqa: F401 - registers the counting hook in miadmark.audit.HOOKS
from dicomnet.queue import NewJob, Queue
from miadmark import audit
from miadmark.machine import describe


def audit_seconds(path: Path, n: int) -> float:
    log = audit.AuditLog(path)
    fields = {"sop_instance_uid": "1.2.3.4", "study_instance_uid": "1.2.3", "calling_ae": "PACS",
              "called_ae": "RESEARCH", "destination": "research", "profile": "plain", "action": "protect"}
    t0 = time.perf_counter()
    for _ in range(n):
        log.write("sent", **fields)
    return (time.perf_counter() - t0) / n


def fill(queue: Queue, n: int) -> None:
    for i in range(n):
        ids = queue.add(file=f"objects/{i}.dcm", sop_uid=f"1.2.{i}", sop_class="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax="1.2.840.10008.1.2.1", study_uid=f"1.2.3.{i // 100}", series_uid="1.2.3.4",
                        calling_ae="PACS", called_ae="RESEARCH",
                        jobs=[NewJob("research", "protect", "rule 1"), NewJob("archive", "pass", "rule 2")])
        if i % 3 == 0:
            queue.mark_done(ids[0])


def get_seconds(url: str, n: int = 30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--queue", type=int, default=20000, help="instances queued (two destinations each)")
    ap.add_argument("--tiny", action="store_true", help="200 records, 200 queued (tests)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.records, args.queue = 200, 200
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare, counted = [], []
        for _ in range(3):  # alternated, best of three each: the machine is shared
            with mock.patch.object(audit, "HOOKS", []):  # the same write, nothing counted
                bare.append(audit_seconds(tmp / "bare.jsonl", args.records))
            counted.append(audit_seconds(tmp / "counted.jsonl", args.records))
        bare, counted = min(bare), min(counted)
        print(f"audit write: {bare * 1e6:.1f} us without counting, {counted * 1e6:.1f} us with "
              f"(x{counted / bare:.2f}, {(counted - bare) * 1e6:.1f} us per record)")
        queue = Queue(tmp / "queue.sqlite")
        fill(queue, args.queue)

        server = MonitoringServer(title="bench", bind="127.0.0.1", port=0, checks=lambda: {"ok": (True, "")},
                                  queue_path=queue.path, audit_path=tmp / "counted.jsonl").start()
        base = f"http://127.0.0.1:{server.port}"
        health, scrape, page = get_seconds(f"{base}/health"), get_seconds(f"{base}/metrics"), get_seconds(f"{base}/")
        print(f"queue of {args.queue * 2} entries: GET /health {health * 1e3:.1f} ms, /metrics {scrape * 1e3:.1f} ms "
              f"(x{scrape / health:.1f}), status page {page * 1e3:.1f} ms (x{page / health:.1f})")
        server.stop()


if __name__ == "__main__":
    main()
