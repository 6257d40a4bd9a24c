"""Forwarding, off the receive path: one thread per destination.

Each round takes up to gateway.batch_size due jobs, protects those whose rule says so (batched, once,
into a durable copy kept until delivered), and only then delivers them over ONE link of the
destination's transport (dicom_node.transports: an association, or one STOW-RS request): no association
is ever open while an image is protected, so a slow protection never idles one into the peer's timeout,
and a retry sends the kept copy (same bytes, same UIDs), never protecting again. Success marks a job
done; a transient failure counts an attempt and schedules the next one with exponential backoff and
jitter, after retry.max_attempts the job is dead (dead letter); a permanent refusal (dicomnet.outcome)
is dead at once, never retried. A destination that cannot be reached makes the thread itself back off,
so a long outage costs one connection attempt per wait.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomnet.dimse import Unreachable
from dicomnet.outcome import Outcome
from miadmark.audit import export_fields, recipient_names
from miadmark.engine import resolve_profile
from miadmark.export import FORWARDED_DEIDENTIFIED, FORWARDED_UNCHANGED
from miadmark.rules import PROTECT, decide

from .lesions import is_lesion_source_job, study_lesions
from .monitoring.backlog import backlogs
from dicomnet.metrics import observe_protect
from .protection import NotProtected, Protected, file_identity
from .transports import TRANSPORTS
from dicomnet.queue import DeidOptions, Job, backoff_delay

log = logging.getLogger("dicom_node.forward")


@dataclass
class Outgoing:
    job: Job
    path: Path
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    note: dict = field(default_factory=dict)  # extra fields of its "sent" audit line


def _lesion_note(deid: DeidOptions) -> str:
    """How a lesion source goes when its copy was made earlier (miadmark.export.Forwarded.note)."""
    return FORWARDED_DEIDENTIFIED if deid.deidentify else FORWARDED_UNCHANGED


def outgoing_pair(job: Job) -> tuple[str, str]:
    """The (SOP class, transfer syntax) a job will go out in: as received, or protected (Explicit VR LE)."""
    if job.action == "pass" or is_lesion_source_job(job):
        return job.sop_class, job.transfer_syntax
    return job.sop_class, ExplicitVRLittleEndian


def trim_heap() -> None:
    """Give the heap's free memory back to the OS (glibc malloc_trim). A protection round allocates a few
    hundred MB of short-lived arrays in a worker thread; glibc keeps them in that thread's arena, so
    without this the forwarder's resident size stays at its largest round and drifts up between arenas."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc():
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (musl, macOS: not there)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


# ---------------------------------------------------------------------------------------- forwarder

@dataclass
class StudyTally:
    action: str
    rule: str
    sent: int = 0
    quarantined: int = 0
    dead: int = 0
    started: float = field(default_factory=time.monotonic)


class Forwarder(threading.Thread):
    """Delivers one destination's queue. `gateway` provides config, queue, spool, protector, audit.

    destinations.X.associations > 1 runs that many workers, each with its own batch and association
    (a job is claimed by one worker at a time), so one transfer's latency (and one batch's protection)
    overlaps another's. A destination's first association opens holding its batch; a further one opens
    holding none (its protected batch goes to the open association meanwhile), so no instance ever waits
    on it, and if the destination rejects it or never answers it (dcmtk storescp takes one association
    at a time), the destination gets as many associations as are open then, from then on.
    """

    def __init__(self, gateway, destination: str):
        super().__init__(name=f"forward-{destination}", daemon=True)
        self.gateway = gateway
        self.destination = destination
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._workers: list[threading.Thread] = []
        self._down_since: float | None = None
        self._retry_at = 0.0  # no worker tries this destination before then (it was unreachable)
        self._backlog_logged = time.monotonic()
        self._failures = 0
        self._studies: dict[str, StudyTally] = {}
        self._reported_unusable: set[str] = set()  # lesion sources already audited as giving no mask
        self._made_notes: dict[int, dict] = {}  # job id -> its "sent" audit fields, for a copy made but not yet sent
        self._slot_free = threading.Condition(self._lock)
        self._open = 0  # links (associations) open or opening to this destination
        self._limit: int | None = None  # lowered from destinations.X.associations by a peer that takes fewer

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        for worker in self._workers:
            worker.join(timeout)
        super().join(timeout)

    def run(self) -> None:
        dest = self.gateway.config.destinations.get(self.destination)
        extra = (getattr(dest, "associations", 1) or 1) - 1 if dest is not None else 0
        for i in range(extra):
            worker = threading.Thread(target=self._loop, name=f"forward-{self.destination}-{i + 1}", daemon=True)
            self._workers.append(worker)
            worker.start()
        self._loop()

    def _loop(self) -> None:
        queue = self.gateway.queue
        while not self.stopping.is_set():
            cfg = self.gateway.config
            try:
                hold = self._retry_at - time.time()  # every worker honours the destination's backoff
                if hold > 0:
                    self.stopping.wait(min(hold, 1.0))
                    continue
                jobs = self._claim(cfg.gateway.batch_size)
                if not jobs:
                    self.gateway.sweep_lesion_sources()  # idle: a moment for housekeeping
                    nxt = queue.next_due_time(self.destination)
                    wait = 1.0 if nxt is None else min(1.0, max(0.0, nxt - time.time()))
                    self.wake.wait(wait)
                    self.wake.clear()
                    continue
                self.deliver(jobs)
                self._log_backlog()
            except Exception:  # noqa: BLE001 - the thread must survive anything and retry
                log.exception("forwarder %s: unexpected error; retrying in 2 s", self.destination)
                self.stopping.wait(2.0)
        queue.close()

    BACKLOG_LOG_S = 30.0  # while instances wait, one backlog line (with its ETA) this often

    def _log_backlog(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._backlog_logged < self.BACKLOG_LOG_S:
                return
            self._backlog_logged = now
        b = backlogs(self.gateway.queue).get(self.destination)
        if b is not None and b.pending:
            log.info("%s", b.line())

    def _claim(self, limit: int) -> list[Job]:
        with self._lock:
            due = self.gateway.queue.due(self.destination, limit + len(self._inflight))
            jobs = [j for j in due if j.id not in self._inflight][:limit]
            self._inflight.update(j.id for j in jobs)
        return jobs

    # ------------------------------------------------------------------------------------ one batch
    def deliver(self, jobs: list[Job]) -> None:
        """One batch of claimed jobs: protected first, then sent over one link (see _deliver).
        Releases every claim this call holds when it ends."""
        mine = {j.id for j in jobs}  # the claims this call holds (handed over early, or released at the end)
        try:
            self._deliver(jobs, mine)
        finally:
            with self._lock:
                self._inflight.difference_update(mine)
            self._log_finished_studies()

    PROTECT_BATCH = 16  # images protected per round (the rest go to another worker or the next round)

    def _deliver(self, jobs: list[Job], mine: set[int]) -> None:
        cfg = self.gateway.config
        dest = cfg.destinations.get(self.destination)
        # a bounded protection round: the first slices go out while the next are protected (by another
        # worker), memory stays flat, and a stop waits for one round at most
        unmade = [j.id for j in jobs if not self._ready(j)][self.PROTECT_BATCH:]
        if unmade:
            self._hand_over(mine, unmade)
            jobs = [j for j in jobs if j.id in mine]
        outgoing = self.prepare(jobs)  # protection: no link of this call is open yet
        if not outgoing:
            return
        link_class = TRANSPORTS.get(dest.kind) if dest is not None else None
        if link_class is None:
            self._unreachable(outgoing, Unreachable(f"destination {self.destination!r} is not a DICOM or STOW-RS "
                                                    "destination in the running configuration"))
            return
        slot = self._take_slot(getattr(dest, "associations", 1) or 1)
        if slot is None:  # every association the destination takes is open: they carry these (ready now)
            self._hand_over(mine, [o.job.id for o in outgoing])
            with self._slot_free:
                if not self.stopping.is_set():
                    self._slot_free.wait(1.0)
            return
        extra = slot > 1 and link_class.lingers
        pause = False
        try:
            if extra:  # another association is open: should this one wait or be refused, no instance waits with it
                self._hand_over(mine, [o.job.id for o in outgoing])
            try:
                link = link_class(dest, cfg.gateway, outgoing)
            except Unreachable as exc:
                if extra:
                    pause = not self._extra_refused(exc)
                else:
                    self._unreachable(outgoing, exc)
                return
            try:
                if extra:  # what the open association left
                    outgoing, _ = self._claim_ready(link, cfg.gateway.batch_size, mine)
                self._send(link, outgoing, mine)
            finally:
                link.close()
        finally:
            self._give_slot()
            if pause:  # after the slot is free: the next try is a first association, whose failure is counted
                self.stopping.wait(1.0)

    def _send(self, link, outgoing: list[Outgoing], mine: set[int]) -> None:
        """Send on an open link; a DICOM association stays open while jobs that need no protection
        (passed, or protected copies already made) come due within LINGER_S, up to gateway.batch_size."""
        batch = self.gateway.config.gateway.batch_size
        sent = 0
        while outgoing:
            # each answer is recorded as it arrives: killed mid-batch, a restart re-sends only the
            # instances not yet answered (not the whole batch; the receiving node ignores those twice)
            try:
                link.send(outgoing, on_result=partial(self._record_one, outgoing))
            except Unreachable as exc:
                self._unreachable(outgoing, exc)
                return
            sent += len(outgoing)
            if not (link.lingers and link.is_open) or sent >= batch or self.stopping.is_set():
                return
            outgoing = self._claim_linger(link, min(batch - sent, self.ROUND), mine)

    LINGER_S = 0.3  # keep an association open this long for more work that needs no protection
    ROUND = 16  # instances claimed at a time while an association is open

    def _claim_linger(self, link, limit: int, mine: set[int]) -> list[Outgoing]:
        """Ready jobs for the open link; none once LINGER_S passes, or at once when due jobs wait for a
        protection nobody has begun (this worker then closes the association and protects them)."""
        end = time.monotonic() + self.LINGER_S
        while not self.stopping.is_set():
            ready, unprotected = self._claim_ready(link, limit, mine)
            if ready or unprotected or time.monotonic() >= end:
                return ready
            time.sleep(0.02)
        return []

    def _claim_ready(self, link, limit: int, mine: set[int]) -> tuple[list[Outgoing], bool]:
        """Claim up to `limit` due jobs this link can carry at once: passed ones, and protected ones whose
        copy is made. Returns them prepared, and whether unclaimed due jobs still need protecting."""
        with self._lock:
            due = self.gateway.queue.due(self.destination, limit + len(self._inflight))
            free = [j for j in due if j.id not in self._inflight]
            ready = [j for j in free if self._ready(j)]
            jobs = [j for j in ready if link.fits(outgoing_pair(j))][:limit]
            self._inflight.update(j.id for j in jobs)
            mine.update(j.id for j in jobs)
        prepared = self.prepare(jobs)
        outgoing = [o for o in prepared if link.fits((o.sop_class, o.transfer_syntax))]
        self._hand_over(mine, [o.job.id for o in prepared if o not in outgoing])
        return outgoing, len(ready) < len(free)

    def _ready(self, job: Job) -> bool:
        """Sendable without protecting: passed, or made by the export step (its copy, or a lesion source
        it let go unchanged)."""
        if job.action == "pass":
            return True
        if job.deid is None:
            return False
        if is_lesion_source_job(job) and job.deid.deidentify is None:  # no copy: the export step passed it here
            return job.id in self._made_notes
        return self._copy_path(job, job.deid).exists()

    def _hand_over(self, mine: set[int], ids: list[int]) -> None:
        """Give up claims (to an open link's linger, or the next round)."""
        with self._lock:
            self._inflight.difference_update(ids)
            mine.difference_update(ids)

    # ------------------------------------------------------------------- associations at a time
    def _take_slot(self, configured: int) -> int | None:
        """A link may open: its number among the open ones (1: the first), or None when the destination's
        associations (as configured, or as lowered by _extra_refused) are all open."""
        with self._lock:
            if self._open >= min(configured, self._limit or configured):
                return None
            self._open += 1
            return self._open

    def _give_slot(self) -> None:
        with self._slot_free:
            self._open -= 1
            self._slot_free.notify_all()

    def _extra_refused(self, exc: Unreachable) -> bool:
        """An association beside an open one failed. Rejected or never answered (a peer that takes one
        association at a time, like dcmtk storescp): the destination takes only those open now, from now
        on (True). Not connected at all: the destination may be going down; the open association will say,
        and this worker pauses with its slot given back (False), so that two workers failing to connect
        cannot keep each other an extra association for ever and no attempt is ever counted."""
        with self._lock:
            others = self._open - 1
            lowered = exc.association_refused and others >= 1 and (self._limit is None or others < self._limit)
            if lowered:
                self._limit = others
        if lowered:
            log.warning("%s: a second association was refused while %d was open (%s): sending over %d "
                        "association(s) at a time from now on", self.destination, others, exc, others)
        return lowered

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.info("%s reachable again after %.0f s", self.destination, time.time() - self._down_since)
        self._down_since, self._failures, self._retry_at = None, 0, 0.0

    def _unreachable(self, outgoing: list[Outgoing], exc: Exception) -> None:
        gw, retry = self.gateway, self.gateway.config.gateway.retry
        self._failures += 1
        for o in outgoing:
            state = gw.queue.mark_failed(o.job, str(exc), max_attempts=retry.max_attempts, base_s=retry.base_s,
                                         max_s=retry.max_s)
            if state == "dead":
                self._finish(o, "dead", str(exc))
        if self._down_since is None:
            self._down_since = time.time()
        waiting = gw.queue.counts().get(self.destination, {}).get("pending", 0)
        now = time.time()
        self._retry_at = max(self._retry_at, now + backoff_delay(self._failures, retry.base_s, retry.max_s))
        due = gw.queue.next_due_time(self.destination)  # a job also waits for its own next try
        delay = max(self._retry_at, due or 0.0) - now
        log.warning("%s unreachable: %s; %d instance(s) waiting, next try in %.1f s",
                    self.destination, exc, waiting, delay)

    def _record_one(self, outgoing: list[Outgoing], index: int, res: Outcome) -> None:
        if index == 0:
            self._reachable()
        self._record([outgoing[index]], [res])

    def _record(self, outgoing: list[Outgoing], results: list[Outcome]) -> None:
        gw, retry = self.gateway, self.gateway.config.gateway.retry
        for o, res in zip(outgoing, results):
            if res.ok:
                gw.queue.mark_done(o.job.id, o.sop_uid)
                self._finish(o, "sent")
            else:  # a permanent refusal is not retried: dead letter at once (`queue retry` re-queues)
                state = gw.queue.mark_failed(o.job, res.error, max_attempts=retry.max_attempts,
                                             base_s=retry.base_s, max_s=retry.max_s, permanent=res.permanent)
                gw.audit.write("send_failed", **self._audit_fields(o.job), error=res.error, state=state)
                if state == "dead":
                    self._finish(o, "dead", res.error)
                else:
                    log.warning("%s: %s not accepted (%s); will retry", self.destination, o.job.sop_uid, res.error)

    def prepare(self, jobs: list[Job]) -> list[Outgoing]:
        """Originals for pass; for protect, what the core's export step makes of each (miadmark.export):
        a protected copy, or a SEG / RTSTRUCT forwarded unchanged or de-identified with its study's mapping
        (its masks keep the watermark off the lesions of its study's images: see dicom_node.lesions for the
        ordering limit). What is refused is quarantined (or retried, when transient)."""
        gw = self.gateway
        out: list[Outgoing] = []
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            with self._lock:
                self._studies.setdefault(job.study_uid, StudyTally(job.action, job.rule))
            path = gw.spool.path(job.file)
            if (job.action == "pass" or is_lesion_source_job(job)) and not path.exists():
                gw.queue.mark_quarantined(job.id, "spooled original missing")
                continue
            if job.action == "pass":
                out.append(Outgoing(job, path, job.sop_uid, job.sop_class, job.transfer_syntax))
                continue
            deid = self._deid(job)
            if isinstance(deid, str):  # fail closed: options unknown, not sent
                self._quarantine(job, deid)
            elif (made := self._made_copy(job, deid)) is not None:
                out.append(made)
            elif not is_lesion_source_job(job) and (poison := self._poison(job)):
                self._quarantine(job, poison)
            else:
                groups.setdefault((job.recipients, job.profile, deid), []).append(job)
        if groups:
            self._protect_groups(groups, out)
        out.sort(key=lambda o: o.job.id)
        return out

    def _protect_groups(self, groups: dict, out: list[Outgoing]) -> None:
        gw = self.gateway
        lesions = study_lesions(gw.spool, gw.queue, {j.study_uid for group in groups.values() for j in group})
        for (recipients, profile, deid), group in groups.items():
            items = [(gw.spool.path(j.file), self._copy_path(j, deid)) for j in group]
            started = time.monotonic()
            results = gw.protector.protect(items, recipients, profile, lesions, destination=self.destination,
                                           deid=deid)
            made = sum(isinstance(r, Protected) and not r.note and r.lesion_masked is not None  # not reused
                       for r in results)
            observe_protect(resolve_profile(profile, gw.config.gateway.device), time.monotonic() - started, made,
                            gw.config.gateway.device)
            for job, res in zip(group, results):
                if isinstance(res, NotProtected):
                    if res.transient:  # out of disk, memory, file handles: retried, never quarantined
                        self._retry_later(job, res.reason)
                    else:
                        self._quarantine(job, res.reason)
                    continue
                note = res.note or (_lesion_note(deid) if is_lesion_source_job(job) else None)
                if note:
                    self._late_lesion_source(job)
                    extra = {"note": note}
                else:
                    extra = {} if res.lesion_masked is None else {"lesion_mask": res.lesion_masked}
                self._made_notes[job.id] = extra  # kept for whichever round sends it (_made_copy)
                out.append(Outgoing(job, res.path, res.sop_uid, res.sop_class, res.transfer_syntax, extra))
        self._report_unusable(lesions.unusable)
        trim_heap()  # the round's arrays are garbage now

    def _made_copy(self, job: Job, deid: DeidOptions) -> Outgoing | None:
        """The copy made for this job by an earlier round (a retry, a crash), sent as it is: never
        protected twice, and not behind the protector's lock (an open association may be waiting)."""
        note = self._made_notes.get(job.id)
        if is_lesion_source_job(job) and deid.deidentify is None:  # goes as received once the export step said so
            if note is None:
                return None
            path = self.gateway.spool.path(job.file)
        else:
            path = self._copy_path(job, deid)
        note = note or ({"note": _lesion_note(deid)} if is_lesion_source_job(job) else {})
        try:
            return Outgoing(job, path, *file_identity(path), note)
        except Exception:  # noqa: BLE001 - none, or damaged: made (again) by the protector
            return None

    def _poison(self, job: Job) -> str | None:
        """Compressed pixel data is decoded in the probe's worker process first (dicom_node.decode_probe);
        the reason when it crashed that worker twice. Uncompressed pixels cannot crash a decoder."""
        probe = getattr(self.gateway, "decode_probe", None)
        if probe is None or not UID(job.transfer_syntax).is_compressed:
            return None
        return probe.poison(job.file, self.gateway.spool.path(job.file))

    def _copy_path(self, job: Job, deid: DeidOptions) -> Path:
        """The spooled copy that goes out for this job: one per destination (its name keys the UIDs),
        recipients, profile and de-identification options."""
        return self.gateway.spool.protected_path(job.file, (self.destination, tuple(sorted(job.recipients)),
                                                            job.profile, deid.to_json()))

    def _deid(self, job: Job) -> DeidOptions | str:
        """The job's de-identification options, or why they are not known. A row queued by an older
        gateway has none recorded: the rules in force decide them again, and if they no longer protect
        this instance for this destination it is not sent."""
        if job.deid is not None:
            return job.deid
        try:
            header = pydicom.dcmread(self.gateway.spool.path(job.file), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - unreadable: not sent
            return f"de-identification options not recorded and the spooled original unreadable ({type(exc).__name__})"
        decision = decide(self.gateway.config, header, destination=self.destination,
                          called_ae=job.called_ae or None, calling_ae=job.calling_ae or None)
        if decision.action != PROTECT:
            return ("queued without its de-identification options, and the rules in force no longer protect it "
                    f"for {self.destination}: not sent")
        return DeidOptions.of(decision)

    def _late_lesion_source(self, job: Job) -> None:
        """Images of its study sent before this lesion source arrived could not avoid its lesions: say so."""
        late = self.gateway.queue.images_sent_before(job.id)
        if late:
            self.gateway.audit.write("lesion_source_late", **self._audit_fields(job), images_already_sent=late,
                                     reason="received after images of its study were protected and sent; "
                                            "their watermark could not avoid its lesions")
            log.warning("%s: lesion source %s of study %s arrived after %d image(s) of the study were sent "
                        "protected without its mask", self.destination, job.sop_uid, job.study_uid, late)

    def _report_unusable(self, unusable: list[tuple[str, str]]) -> None:
        for uid, reason in unusable:
            if uid in self._reported_unusable:
                continue
            self._reported_unusable.add(uid)
            self.gateway.audit.write("lesion_source_unusable", sop_instance_uid=uid, destination=self.destination,
                                     reason=reason)
            log.warning("%s: lesion source %s gives no mask (%s): images of its study are protected without it",
                        self.destination, uid, reason)

    def _retry_later(self, job: Job, reason: str) -> None:
        retry = self.gateway.config.gateway.retry
        state = self.gateway.queue.mark_failed(job, reason, max_attempts=retry.max_attempts, base_s=retry.base_s,
                                               max_s=retry.max_s)
        self.gateway.audit.write("protect_deferred", **self._audit_fields(job), reason=reason, state=state)
        log.warning("%s: %s not protected now (%s): %s", self.destination, job.sop_uid, reason,
                    "will retry" if state == "pending" else "dead letter (kept in the spool)")

    def _quarantine(self, job: Job, reason: str) -> None:
        gw = self.gateway
        src = gw.spool.path(job.file)
        try:
            qpath = gw.quarantine_object(src, reason=reason, sop_uid=job.sop_uid, destination=self.destination,
                                         rule=job.rule, calling_ae=job.calling_ae, called_ae=job.called_ae)
        except OSError as exc:  # not safely in quarantine: the spooled original stays, the job retries
            self._retry_later(job, f"{reason}; quarantine not writable ({exc.strerror or type(exc).__name__})")
            return
        gw.queue.mark_quarantined(job.id, reason)
        gw.audit.write("quarantined", **self._audit_fields(job), reason=reason, quarantine=str(qpath))
        log.warning("%s: %s not protected, quarantined, not sent: %s", self.destination, job.sop_uid, reason)
        with self._lock:
            tally = self._studies.get(job.study_uid)
            if tally:
                tally.quarantined += 1
        gw.release_file(job.file)

    def _finish(self, o: Outgoing, outcome: str, error: str = "") -> None:
        gw = self.gateway
        self._made_notes.pop(o.job.id, None)
        fields = self._audit_fields(o.job)
        if outcome == "sent":
            gw.audit.write("sent", **fields, sent_sop_instance_uid=o.sop_uid, transfer_syntax=o.transfer_syntax,
                           **o.note)
        else:
            gw.audit.write("dead_letter", **fields, error=error)
            log.error("%s: %s moved to the dead letter after %d attempts: %s", self.destination, o.job.sop_uid,
                      o.job.attempts + 1, error)
        with self._lock:
            tally = self._studies.get(o.job.study_uid)
            if tally:
                if outcome == "sent":
                    tally.sent += 1
                else:
                    tally.dead += 1
        gw.release_file(o.job.file)

    def _audit_fields(self, job: Job) -> dict:
        return export_fields(sop_instance_uid=job.sop_uid, study_instance_uid=job.study_uid,
                             destination=self.destination, action=job.action, rule=job.rule, way="gateway",
                             calling_ae=job.calling_ae, called_ae=job.called_ae,
                             recipients=recipient_names(job.recipients),
                             profile=resolve_profile(job.profile, self.gateway.config.gateway.device),  # engine used
                             deidentify=job.deid.deidentify if job.deid is not None else None)

    def _log_finished_studies(self) -> None:
        with self._lock:
            studies = list(self._studies.items())
        for study, t in studies:
            if self.gateway.queue.pending_in_study(self.destination, study):
                continue
            with self._lock:
                if self._studies.pop(study, None) is None:
                    continue  # another worker logged it
            if not (t.sent or t.quarantined or t.dead):
                continue
            extra = "".join([f", {t.quarantined} quarantined (not sent)" if t.quarantined else "",
                             f", {t.dead} failed (dead letter)" if t.dead else ""])
            log.info("study %s -> %s: %d instance(s) sent (%s, %s)%s in %.1f s", study, self.destination,
                     t.sent, t.action, t.rule, extra, time.monotonic() - t.started)
