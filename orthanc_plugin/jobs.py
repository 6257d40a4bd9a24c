"""Work off Orthanc's callback threads.

Orthanc runs REST and ingestion callbacks on threads with small stacks: decoding pixels there
overflowed the stack and killed Orthanc. Every piece of pydicom/numpy/torch work therefore runs
on a `Worker`: Python threads started with a 32 MiB stack. A callback either waits for the
result (`Worker.call`) or hands back a job id (`Worker.submit`) that `GET /jobs/<id>` and
`GET /miadmark/jobs/<id>` report on.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

STACK_SIZE = 32 * 1024 * 1024
JOB_PREFIX = "miadmark-"
KEEP_FINISHED = 500


@dataclass
class Job:
    """One export (or other long task). Fields are read by the status routes."""

    kind: str
    description: str
    id: str = field(default_factory=lambda: JOB_PREFIX + str(uuid.uuid4()))
    state: str = "Pending"  # Pending | Running | Success | Failure
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    total: int = 0
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    _event: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def error(self, message: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(message)

    def summary(self) -> dict[str, Any]:
        now = time.time()
        return {
            "ID": self.id,
            "Type": self.kind,
            "Description": self.description,
            "State": self.state,
            "Progress": int(100 * self.done / self.total) if self.total else (100 if self.finished else 0),
            "InstancesCount": self.total,
            "DoneCount": self.done,
            "FailedInstancesCount": self.failed,
            "Errors": list(self.errors),
            "CreationTime": _iso(self.created),
            "EffectiveRuntime": round(((self.finished or now) - self.started), 3) if self.started else 0.0,
            "ErrorCode": 0 if self.state != "Failure" else -1,
            "ErrorDescription": ("Success" if self.state != "Failure"
                                 else (self.errors[0] if self.errors else "Failure")),
            "Content": dict(self.result),
            "Priority": 0,
            "Timestamp": _iso(now),
        }


def _iso(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))


class Worker:
    """Threads with a big stack draining one queue; a bounded history of jobs."""

    def __init__(self, name: str, threads: int = 1, log: Callable[[str], None] | None = None):
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._log = log or (lambda message: None)
        self._threads = []
        previous = threading.stack_size(STACK_SIZE)
        try:
            for i in range(threads):
                thread = threading.Thread(target=self._run, name=f"miadmark-{name}-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
        finally:
            threading.stack_size(previous)

    # ------------------------------------------------------------------ submitting work

    def submit(self, job: Job, fn: Callable[[Job], Any]) -> Job:
        """Queue fn(job) and return at once; job.state tells how it ends."""
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_FINISHED:
                oldest = next(iter(self._jobs.values()))
                if oldest.finished is None:
                    break
                self._jobs.popitem(last=False)
        self._queue.put((job, fn))
        return job

    def post(self, fn: Callable[[], Any]) -> None:
        """Run fn() on a worker thread some time soon; its exceptions are logged, not raised."""
        def task(_job):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                self._log(f"{self.name} task failed: {exc}")
        self._queue.put((None, task))

    def call(self, fn: Callable[..., Any], *args, timeout: float | None = None, **kwargs) -> Any:
        """Run fn(*args, **kwargs) on a worker thread and return its result (or raise its exception)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def task(_job):
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self._queue.put((None, task))
        if not done.wait(timeout):
            raise TimeoutError(f"{self.name} worker did not answer within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # ------------------------------------------------------------------ introspection

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def pending(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        for _ in itertools.count():
            job, fn = self._queue.get()
            if job is None:
                fn(None)
                continue
            job.state, job.started = "Running", time.time()
            try:
                fn(job)
                job.state = "Failure" if job.failed or job.errors else "Success"
            except Exception as exc:  # noqa: BLE001 - a job's failure is recorded, the worker lives on
                job.error(str(exc) or type(exc).__name__)
                job.state = "Failure"
                self._log(f"job {job.id} failed: {exc}\n{traceback.format_exc(limit=5)}")
            finally:
                job.finished = time.time()
                job._event.set()
