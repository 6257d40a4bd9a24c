"""Gauges read from the gateway's durable queue when Prometheus scrapes (no state kept here):
the queue is shared by the receiving and the forwarding process, so both are seen."""

from __future__ import annotations

from pathlib import Path

from dicomnet.queue import STATES, Queue


def queue_snapshot(path: str | Path) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Queue.status() rows and Queue.retries(), from a connection opened and closed here."""
    if not Path(path).exists():
        return [], {}
    queue = Queue(path)
    try:
        return queue.status(), queue.retries()
    finally:
        queue.close()


class QueueCollector:
    """A prometheus-client collector: miadmark_queue_* by destination."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        rows, retries = queue_snapshot(self.path)
        jobs = GaugeMetricFamily("miadmark_queue_jobs", "queue entries by destination and state",
                                 labels=("destination", "state"))
        oldest = GaugeMetricFamily("miadmark_queue_oldest_pending_seconds", "age of the oldest pending entry",
                                   labels=("destination",))
        retrying = GaugeMetricFamily("miadmark_queue_retrying", "pending entries that failed at least once",
                                     labels=("destination",))
        attempts = GaugeMetricFamily("miadmark_queue_failed_attempts", "failed attempts of the pending entries",
                                     labels=("destination",))
        for row in rows:
            dest = row["destination"]
            for state in STATES:
                jobs.add_metric((dest, state), row.get(state, 0))
            oldest.add_metric((dest,), row["oldest_pending_s"] or 0.0)
            n, tries = retries.get(dest, (0, 0))
            retrying.add_metric((dest,), n)
            attempts.add_metric((dest,), tries)
        yield from (jobs, oldest, retrying, attempts)
