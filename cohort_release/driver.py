"""The release driver: list the cohort, settle what a crash left open, feed batches to the actors,
record every outcome in the manifest, show progress, print a summary.

Flow per batch: actor.prepare (fetch, rules, protect, hold) -> manifest: pending with the UID it will
be sent as -> actor.send -> manifest: sent / failed. At most `inflight` batches per actor, so an
actor protects the next batch while the driver records the last. A worker that dies is replaced
and its batch retried (a batch that kills a worker again is split, so one poison instance fails
alone); a send whose outcome is unknown is settled by asking the destination for the UID.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby

from miadmark.config import load_config
from miadmark import loaded

from .job import ReleaseJob
from .listing import InstanceRef, list_cohort
from .manifest import FAILED, PENDING, SENT, SKIPPED, TODO, Manifest
from .patience import Unavailable
from .client import dicomweb_client
from .sink import open_sink

log = logging.getLogger(__name__)
MAX_TRIES = 3  # a batch whose worker died this often is split / its instance failed


@dataclass
class RunOptions:
    state: str = "release-state"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    inflight: int = 2                     # batches per actor between prepare and confirmed send
    address: str | None = None            # None: a local Ray on this machine; "auto" or ray://host:10001
    filters: dict[str, str] = field(default_factory=dict)
    studies: list[str] | None = None
    max_rate: float | None = None         # instances/s dispatched at most (spare a clinical archive)
    object_store_mb: int = 256            # local Ray only: batches carry UIDs, not pixels
    progress: bool = True
    start_timeout_s: float = 600.0        # workers must be up (engine loaded) by then


@dataclass
class Batch:
    id: int
    refs: list[InstanceRef]
    tries: int = 0


@dataclass
class Summary:
    counts: dict[str, int]
    sent_now: int
    stopped: str | None
    failed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    done_now: int = 0          # instances settled this run (sent, skipped or failed) by the workers
    elapsed_s: float = 0.0     # from the workers being ready to the last outcome

    @property
    def exit_code(self) -> int:
        return 3 if self.stopped else (1 if self.failed else 0)


def check_job(job: ReleaseJob) -> None:
    """Keys, certificates and rules load here before any worker starts: a mistake is one clear error."""
    loaded.identity(job.sign_key, job.sign_cert, job.passphrase_file)
    if job.recipients:
        loaded.certificates(list(job.recipients))
    if job.config:
        load_config(job.config)
    open_sink(job.dest)


def release(job: ReleaseJob, opts: RunOptions, say: Callable[[str], None] = print) -> Summary:
    check_job(job)
    manifest = Manifest(opts.state)
    try:
        manifest.bind(job.source, job.dest)
        return _release(job, opts, manifest, say)
    finally:
        manifest.close()


def _release(job: ReleaseJob, opts: RunOptions, manifest: Manifest, say) -> Summary:
    sent_before = manifest.counts()[SENT]
    stopped, timing = None, {}
    try:
        refs = list_cohort(dicomweb_client(job.source, timeout_s=job.timeout_s), filters=opts.filters,
                           studies=opts.studies, patience_s=job.patience_s)
        new = manifest.add(refs)
        say(f"cohort: {len(refs)} instance(s) listed, {new} new to the manifest {manifest.path}")
        sink = open_sink(job.dest, **job.sink_options())
        _settle(manifest, sink, manifest.in_state(PENDING), say)
        work = [ref for ref, _ in manifest.in_state(TODO, FAILED)]
        if work:
            stopped = _dispatch(job, opts, manifest, sink, work, say, timing)
    except Unavailable as exc:
        stopped = str(exc)
    counts = manifest.counts()
    return Summary(dict(counts), counts[SENT] - sent_before, stopped, manifest.reasons(FAILED),
                   manifest.reasons(SKIPPED), **timing)


def _settle(manifest: Manifest, sink, pending: list[tuple[InstanceRef, str | None]], say) -> list[InstanceRef]:
    """Pending rows: sent if the destination has the UID, else back to todo. Returns the todo refs."""
    if not pending:
        return []
    arrived, missing = [], []
    for ref, uid in pending:
        (arrived if uid and sink.has(ref.study, uid) else missing).append(ref)
    manifest.record([{"sop": r.sop, "state": SENT} for r in arrived]
                    + [{"sop": r.sop, "state": TODO, "reason": "send not confirmed; destination lacks it"}
                       for r in missing])
    say(f"settled {len(pending)} unconfirmed send(s): {len(arrived)} at the destination, {len(missing)} to resend")
    return missing


def _batches(refs: list[InstanceRef], size: int) -> list[list[InstanceRef]]:
    """Runs of one series, at most `size` long: a series goes through the engine together."""
    out = []
    for _, series in groupby(refs, key=lambda r: (r.study, r.series)):
        series = list(series)
        out += [series[i:i + size] for i in range(0, len(series), size)]
    return out


def start_ray(opts: RunOptions):
    import ray

    if ray.is_initialized():
        return ray
    if opts.address:
        ray.init(address=opts.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(opts.workers * opts.cpus_per_worker + 0.999)),
                 include_dashboard=False, object_store_memory=opts.object_store_mb * 2**20,
                 logging_level=logging.WARNING)
    return ray


def _dispatch(job: ReleaseJob, opts: RunOptions, manifest: Manifest, sink, work: list[InstanceRef], say,
              timing: dict) -> str | None:
    from tqdm import tqdm

    ray = start_ray(opts)
    from .protector import Protector

    actor_class = ray.remote(Protector).options(num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker,
                                                max_restarts=2, max_task_retries=1)
    if opts.gpus_per_worker and not ray.cluster_resources().get("GPU"):
        raise ValueError("--gpus-per-worker: the Ray cluster has no GPU (the workers would wait forever)")
    slots = [actor_class.remote(job) for _ in range(opts.workers)]
    try:  # an actor that cannot start (keys, engine, no room in the cluster) fails here, clearly
        devices = ray.get([a.ready.remote() for a in slots], timeout=opts.start_timeout_s)
    except ray.exceptions.RayError as exc:
        for actor in slots:
            ray.kill(actor)
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise ValueError(f"{opts.workers} worker(s) did not start within {opts.start_timeout_s:.0f} s "
                             "(not enough CPUs / GPUs free in the Ray cluster?)") from None
        raise ValueError(f"the workers did not start: {str(exc).strip().splitlines()[-1]}") from None
    say(f"{len(slots)} worker(s) on {', '.join(sorted(set(devices)))}; {len(work)} instance(s) to release")

    queue = deque(Batch(i, refs) for i, refs in enumerate(_batches(work, opts.batch_size)))
    next_id = len(queue)
    inflight: dict = {}      # ObjectRef -> (phase, slot, batch, actor it went to)
    per_slot = [0] * len(slots)
    stopped: str | None = None
    started, dispatched = time.monotonic(), 0
    bar = tqdm(total=len(work), unit="inst", desc="release", file=sys.stderr, disable=not opts.progress,
               smoothing=0.1)
    done = 0  # instances settled (sent, skipped, failed); tqdm does not count when disabled

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(n)

    def feed(slot: int) -> None:
        nonlocal dispatched
        while not stopped and queue and per_slot[slot] < opts.inflight:
            batch = queue.popleft()
            if opts.max_rate:  # pace dispatch: at most max_rate instances/s on average
                time.sleep(max(0.0, started + dispatched / opts.max_rate - time.monotonic()))
            dispatched += len(batch.refs)
            per_slot[slot] += 1
            inflight[slots[slot].prepare.remote(batch.id, batch.refs)] = ("prepare", slot, batch, slots[slot])

    def requeue(batch: Batch, refs: list[InstanceRef], reason: str) -> None:
        nonlocal next_id
        if batch.tries + 1 >= MAX_TRIES:
            manifest.record([{"sop": r.sop, "state": FAILED, "reason": reason} for r in refs])
            advance(len(refs))
            return
        for part in ([refs] if len(refs) == 1 or batch.tries == 0 else [[r] for r in refs]):
            queue.appendleft(Batch(next_id, part, batch.tries + 1))
            next_id += 1

    def finished(slot: int, batch: Batch, outcomes: list[dict]) -> None:
        nonlocal stopped
        per_slot[slot] -= 1
        manifest.record(outcomes)
        advance(sum(o["state"] in (SENT, SKIPPED, FAILED) for o in outcomes))
        if any(o["unavailable"] for o in outcomes):
            stopped = stopped or next(o["reason"] for o in outcomes if o["unavailable"])

    for slot in range(len(slots)):
        feed(slot)
    try:
        while inflight:
            (ready,), _ = ray.wait(list(inflight), num_returns=1)
            phase, slot, batch, actor = inflight.pop(ready)
            try:
                outcomes = ray.get(ready)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                outcomes = None
                reason = f"worker failed ({type(exc).__name__})"
                log.warning("batch %d: %s; retrying", batch.id, reason)
                if isinstance(exc, ray.exceptions.RayActorError) and slots[slot] is actor:
                    slots[slot] = actor_class.remote(job)  # replace a worker Ray could not restart
            if phase == "prepare":
                if outcomes is None:
                    per_slot[slot] -= 1
                    requeue(batch, batch.refs, reason)
                else:
                    _record_prepared(manifest, outcomes, advance)
                    if any(o["state"] == PENDING for o in outcomes):
                        inflight[slots[slot].send.remote(batch.id)] = ("send", slot, batch, slots[slot])
                    else:
                        finished(slot, batch, [])
                    if any(o["unavailable"] for o in outcomes):
                        stopped = stopped or next(o["reason"] for o in outcomes if o["unavailable"])
            elif outcomes is None or any(o["state"] == PENDING and not o["unavailable"] for o in outcomes):
                # the actor lost the batch (restarted) or the send's outcome is unknown: ask the destination
                per_slot[slot] -= 1
                settled = [o for o in outcomes or [] if o["state"] != PENDING]
                manifest.record(settled)
                advance(len(settled))
                pending = {sop: uid for sop, uid in ((r.sop, u) for r, u in manifest.in_state(PENDING))}
                open_refs = [r for r in batch.refs if r.sop in pending]
                missing = _settle(manifest, sink, [(r, pending[r.sop]) for r in open_refs], say)
                advance(len(open_refs) - len(missing))
                if missing:
                    requeue(batch, missing, outcomes[0]["reason"] if outcomes else "worker lost the batch")
            else:
                finished(slot, batch, outcomes)
            feed(slot)
    finally:
        bar.close()
        for actor in slots:  # this release's workers end with it (a driver that lives on, e.g. a benchmark)
            ray.kill(actor)
        elapsed = time.monotonic() - started
        timing.update(done_now=done, elapsed_s=elapsed)
        say(f"{done} instance(s) done in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} instances/s)")
    return stopped


def _record_prepared(manifest: Manifest, outcomes: list[dict], advance: Callable[[int], None]) -> None:
    """Pending rows first (the UID to look for after a crash), before the send is even asked for."""
    manifest.record(outcomes)
    advance(sum(o["state"] in (SKIPPED, FAILED) for o in outcomes))


def print_summary(summary: Summary, say: Callable[[str], None] = print, limit: int = 50) -> None:
    c = summary.counts
    left = c.get(TODO, 0) + c.get(PENDING, 0)
    say(f"release: {c.get(SENT, 0)} sent ({summary.sent_now} this run), {c.get(SKIPPED, 0)} skipped, "
        f"{c.get(FAILED, 0)} failed, {left} not yet released")
    for label, rows in (("failed", summary.failed), ("skipped", summary.skipped)):
        for sop, reason in rows[:limit]:
            say(f"  {label} {sop}: {reason}")
        if len(rows) > limit:
            say(f"  ... and {len(rows) - limit} more {label} (see the manifest)")
    if summary.stopped:
        say(f"stopped: {summary.stopped}; rerun the same command to resume")
