"""Work off Orthanc's callback threads, and export jobs as Orthanc's job API shows them.

Orthanc runs REST and ingestion callbacks on threads with small stacks: decoding pixels there
overflowed the stack and killed Orthanc. Every piece of pydicom/numpy/torch work therefore runs
on Python threads started with a 32 MiB stack: a `Worker` (a callback waits for its result) or
the delivery thread (delivery.py). Export jobs live in the outbox (outbox.py); `summary` gives
them the shape of Orthanc's `GET /jobs/{id}`.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from .outbox import ExportJob

STACK_SIZE = 32 * 1024 * 1024


def start_thread(name: str, fn: Callable[[], Any]) -> threading.Thread:
    previous = threading.stack_size(STACK_SIZE)
    try:
        thread = threading.Thread(target=fn, name=f"miadmark-{name}", daemon=True)
        thread.start()
    finally:
        threading.stack_size(previous)
    return thread


def summary(job: ExportJob, progress: dict) -> dict[str, Any]:
    """Orthanc's job fields, computed from the job's queue rows (what was really delivered)."""
    total = sum(progress[k] for k in ("pending", "retrying", "done", "dead", "quarantined"))
    waiting = progress["pending"] + progress["retrying"]
    failed = progress["dead"] + progress["quarantined"]
    if waiting:
        state = "Running" if progress["first_update"] or progress["done"] else "Pending"
    else:
        state = "Failure" if failed else "Success"
    finished = progress["last_update"] if not waiting else None
    now = time.time()
    errors = progress["errors"]
    return {
        "ID": job.id,
        "Type": job.kind,
        "Description": job.description,
        "State": state,
        "Progress": int(100 * (total - waiting) / total) if total else 100,
        "InstancesCount": total,
        "DoneCount": progress["done"],
        "FailedInstancesCount": failed,
        "PendingCount": progress["pending"],
        "RetryingCount": progress["retrying"],
        "NextRetry": _iso(progress["next_try"]) if progress["next_try"] else None,
        "Errors": errors,
        "CreationTime": _iso(job.created),
        "CompletionTime": _iso(finished) if finished else None,
        "EffectiveRuntime": round((finished or now) - job.created, 3),
        "ErrorCode": -1 if state == "Failure" else 0,
        "ErrorDescription": (errors[0] if errors else "Failure") if state == "Failure" else "Success",
        "Content": {"LesionMasked": 0, "LesionSourcesUsed": [], "LesionSourcesForwardedUnchanged": [],
                    **job.content, "ProtectedSent": progress["sent"]["protect"],
                    "PassedSent": progress["sent"]["pass"], "Retry": job.retry},
        "Priority": 0,
        "Timestamp": _iso(now),
    }


def finished(summary_: dict) -> bool:
    return summary_["State"] in ("Success", "Failure")


def _iso(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))


class Worker:
    """One thread with a big stack draining a queue of small tasks."""

    def __init__(self, name: str, log: Callable[[str], None] | None = None):
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._log = log or (lambda message: None)
        start_thread(name, self._run)

    def post(self, fn: Callable[[], Any]) -> None:
        """Run fn() on the worker thread some time soon; its exceptions are logged, not raised."""
        def task():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                self._log(f"{self.name} task failed: {type(exc).__name__}: {exc}")
        self._queue.put(task)

    def call(self, fn: Callable[..., Any], *args, timeout: float | None = None, **kwargs) -> Any:
        """Run fn(*args, **kwargs) on the worker thread and return its result (or raise its exception)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def task():
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self._queue.put(task)
        if not done.wait(timeout):
            raise TimeoutError(f"{self.name} worker did not answer within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            self._queue.get()()
