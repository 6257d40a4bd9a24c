"""Forwarding, off the receive path: one thread per destination.

Each round takes up to gateway.batch_size due jobs, protects those whose rule says so (batched,
once), then delivers them over ONE link of the destination's transport (dicom_node.transports: an
association, or one STOW-RS request). Success marks a job done; a transient failure counts an attempt
and schedules the next one with exponential backoff and jitter, after retry.max_attempts the job is
dead (dead letter); a permanent refusal (dicomnet.outcome) is dead at once, never retried. A
destination that cannot be reached makes the thread itself back off, so a long outage costs one
connection attempt per wait.
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
from miadmark.rules import PROTECT, decide

from .lesions import FORWARDED_DEIDENTIFIED, FORWARDED_UNCHANGED, is_lesion_source_job, study_lesions
from .monitoring.backlog import backlogs
from dicomnet.metrics import observe_protect
from .protection import NotProtected, Protected
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


def outgoing_pair(job: Job) -> tuple[str, str]:
    """The (SOP class, transfer syntax) a job will go out in: as received, or protected (Explicit VR LE)."""
    if job.action == "pass" or is_lesion_source_job(job):
        return job.sop_class, job.transfer_syntax
    return job.sop_class, ExplicitVRLittleEndian


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
    (a job is claimed by one worker at a time), so one transfer's latency overlaps another's.
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
                try:
                    self.deliver(jobs)
                finally:
                    with self._lock:
                        self._inflight.difference_update(j.id for j in jobs)
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
        """One batch: one association (or one STOW-RS request). A DICOM association stays open while
        more jobs for it arrive within LINGER_S, up to gateway.batch_size instances in all."""
        cfg = self.gateway.config
        dest = cfg.destinations.get(self.destination)
        outgoing = self.prepare(jobs)
        if not outgoing:
            self._log_finished_studies()
            return
        link_class = TRANSPORTS.get(dest.kind) if dest is not None else None
        try:
            if link_class is None:
                raise Unreachable(f"destination {self.destination!r} is not a DICOM or STOW-RS destination "
                                  "in the running configuration")
            link = link_class(dest, cfg.gateway, outgoing)
        except Unreachable as exc:
            self._unreachable(outgoing, exc)
            self._log_finished_studies()
            return
        extra_claims: list[int] = []
        try:
            sent = 0
            while outgoing:
                # each answer is recorded as it arrives: killed mid-batch, a restart re-sends only the
                # instances not yet answered (not the whole batch; the receiving node ignores those twice)
                try:
                    link.send(outgoing, on_result=partial(self._record_one, outgoing))
                except Unreachable as exc:
                    self._unreachable(outgoing, exc)
                    break
                sent += len(outgoing)
                if not (link.lingers and link.is_open) or sent >= cfg.gateway.batch_size or self.stopping.is_set():
                    break
                # small rounds: protecting a round keeps the association idle, and peers time out
                more = self._claim_linger(min(cfg.gateway.batch_size - sent, self.ROUND))
                if not more:
                    break
                # what this association cannot carry is left for the next one before it is protected
                # (a SEG's association carries no PET: protecting them here would be work thrown away)
                later = {j.id for j in more if not link.fits(outgoing_pair(j))}
                extra_claims += [j.id for j in more if j.id not in later]
                prepared = self.prepare([j for j in more if j.id not in later])
                outgoing = [o for o in prepared if link.fits((o.sop_class, o.transfer_syntax))]
                unfit = {o.job.id for o in prepared} - {o.job.id for o in outgoing}
                extra_claims = [i for i in extra_claims if i not in unfit]
                later |= unfit
                if later:  # needs a presentation context this association lacks: the next one
                    with self._lock:  # (and no longer ours: the finally below must not release it again)
                        self._inflight.difference_update(later)
        finally:
            link.close()
            with self._lock:
                self._inflight.difference_update(extra_claims)
            self._log_finished_studies()

    LINGER_S = 0.3  # keep an association open this long for more work
    ROUND = 16  # instances claimed at a time while an association is open

    def _claim_linger(self, limit: int) -> list[Job]:
        end = time.monotonic() + self.LINGER_S
        while not self.stopping.is_set():
            jobs = self._claim(limit)
            if jobs or time.monotonic() >= end:
                return jobs
            time.sleep(0.02)
        return []

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
        """Originals for pass, protected copies for protect; what cannot be protected is quarantined.
        A SEG / RTSTRUCT on a protect route is not watermarked: forwarded unchanged, or de-identified when
        the route de-identifies; its masks keep the watermark off the lesions of its study's images (see
        dicom_node.lesions for the ordering limit)."""
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
            elif is_lesion_source_job(job):
                self._lesion_source(job, path, deid, out)
            elif poison := self._poison(job):
                self._quarantine(job, poison)
            else:
                groups.setdefault((job.recipients, job.profile, deid), []).append(job)
        masks = {}
        if groups:
            protect_jobs = [j for group in groups.values() for j in group]
            lesions = study_lesions(gw.spool, gw.queue, {j.study_uid for j in protect_jobs},
                                    [gw.spool.path(j.file) for j in protect_jobs])
            self._report_unusable(lesions.unusable)
            masks = lesions.masks
        for (recipients, profile, deid), group in groups.items():
            items = [(gw.spool.path(j.file), self._copy_path(j, deid)) for j in group]
            started = time.monotonic()
            results = gw.protector.protect(items, recipients, profile, masks, destination=self.destination,
                                           deid=deid)
            observe_protect(profile, time.monotonic() - started, sum(isinstance(r, Protected) for r in results),
                            gw.config.gateway.device)
            for job, res in zip(group, results):
                if isinstance(res, Protected):
                    note = {} if res.lesion_masked is None else {"lesion_mask": res.lesion_masked}
                    out.append(Outgoing(job, res.path, res.sop_uid, res.sop_class, res.transfer_syntax, note))
                elif res.transient:  # out of disk, memory, file handles: retried, never quarantined
                    self._retry_later(job, res.reason)
                else:
                    self._quarantine(job, res.reason)
        out.sort(key=lambda o: o.job.id)
        return out

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

    def _lesion_source(self, job: Job, path: Path, deid: DeidOptions, out: list[Outgoing]) -> None:
        """A SEG / RTSTRUCT on a protect route carries no image to watermark: it goes as received, or
        de-identified with its study's mapping when the route de-identifies (never with the identity the
        route removes). Images of its study sent before it arrived could not avoid its lesions: say so."""
        if deid.deidentify is None:
            res: Protected | NotProtected = Protected(path, job.sop_uid, job.sop_class, job.transfer_syntax)
            note = FORWARDED_UNCHANGED
        else:
            res = self.gateway.protector.deidentify_source(path, self._copy_path(job, deid), job.recipients,
                                                           destination=self.destination, deid=deid)
            note = FORWARDED_DEIDENTIFIED
        if isinstance(res, NotProtected):
            if res.transient:
                self._retry_later(job, res.reason)
            else:
                self._quarantine(job, res.reason)
            return
        late = self.gateway.queue.images_sent_before(job.id)
        if late:
            self.gateway.audit.write("lesion_source_late", **self._audit_fields(job), images_already_sent=late,
                                     reason="received after images of its study were protected and sent; "
                                            "their watermark could not avoid its lesions")
            log.warning("%s: lesion source %s of study %s arrived after %d image(s) of the study were sent "
                        "protected without its mask", self.destination, job.sop_uid, job.study_uid, late)
        out.append(Outgoing(job, res.path, res.sop_uid, res.sop_class, res.transfer_syntax, {"note": note}))

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
        fields = {"sop_instance_uid": job.sop_uid, "study_instance_uid": job.study_uid,
                  "calling_ae": job.calling_ae, "called_ae": job.called_ae, "rule": job.rule,
                  "action": job.action, "destination": self.destination}
        if job.action == "protect":
            fields["recipients"] = self.gateway.protector.recipient_names(job.recipients)
            fields["profile"] = job.profile
            fields["deidentify"] = job.deid.deidentify if job.deid is not None else None
        return fields

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
