"""Deliver what the outbox holds: one thread (big stack) protects and sends the due rows.

Each row is decided again with the rules in force when it is sent (a rule changed or an Orthanc
restart in between applies; now blocked -> never sent). Then:
  pass    -> Orthanc's own route, as an Orthanc job that is polled
  protect -> the core's export step (miadmark.export) in batches: a protected image, or a lesion
             source (SEG / RTSTRUCT) forwarded unchanged (Orthanc's own route) or de-identified with
             its study's mapping; then one C-STORE / POST per object (senders.py), lesion sources
             first. Each delivery is committed as done before the next one is sent. What goes out is
             kept on disk from its making until that commit: a kill -9 or a failed attempt sends the
             same object again (same protected UID: the destination keeps one). What the step refuses
             is quarantined with its reason (retried when transient): never sent raw.
Each answer is a dicomnet Outcome, read as the gateway reads it: a failed delivery counts an attempt
and waits under the one retry policy (dicomnet.outcome.RetryPolicy, the `retry` option); after
retry.max_attempts the row is dead (a dead letter with its reason), and a permanent refusal (0x0110,
HTTP 409 / 400, ...) is dead at once. Exports a caller waits for (synchronous REST, C-MOVE) get one
attempt: the caller is told, nothing is retried behind it. A destination that cannot be reached
fails the rest of the job's due rows at once (no protect work for an unreachable destination).
"""

from __future__ import annotations

import io
import queue
import threading
import time
from pathlib import Path

import pydicom

from dicomnet.outcome import RetryPolicy
from miadmark import loaded
from miadmark.audit import (DEAD_LETTER, PROTECT_DEFERRED, QUARANTINED, SEND_FAILED, SENT, AuditLog, export_fields,
                            outcome_fields, recipient_names)
from miadmark.config import RetryConfig
from miadmark.engine import resolve_profile
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes
from miadmark.export import FORWARDED_UNCHANGED, Forwarded, Refused, export_many
from miadmark.lesion import StudyLesions
from miadmark.rules import BLOCK, PASS, PROTECT, decide

from .exports import Target
from .jobs import start_thread
from .lesions import lesion_sources_of
from .outbox import ExportJob, Outbox, Row
from .sdk import orthanc
from .targets import make_sender, send_plain

DUE_LIMIT = 256  # rows looked at per step
STEP_ROWS = 64  # rows of one job delivered per step


class Down(Exception):
    """The target did not take an association / connection: the job's other rows wait too."""


class Delivery:
    def __init__(self, outbox: Outbox, settings, log):
        self.outbox, self.settings, self.log = outbox, settings, log
        self._audit: AuditLog | None = None
        self._decided: dict = {}  # row id -> its decision in this step (for its audit lines)
        self._wake = threading.Event()
        self._started = threading.Event()
        self.thread = start_thread("delivery", self._loop)

    def start(self) -> None:
        """Orthanc has started: its database can be read (not during the plugin's initialization)."""
        self._started.set()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        self._started.wait()
        start_thread("warm", self._warm)  # beside the deliveries: a clean export does not wait for it
        while True:
            try:
                worked = self.step()
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything
                self.log(f"delivery: unexpected error ({type(exc).__name__}: {exc}); again in 2 s")
                worked = False
                time.sleep(2)
            if not worked:
                due = self.outbox.next_due_time()
                wait = 5.0 if due is None or self.settings.config is None else min(5.0, max(0.05, due - time.time()))
                self._wake.wait(wait)
                self._wake.clear()

    def _warm(self) -> None:
        """Load the engines of the protect rules in force now, not in the first export's first batch while
        its destination waits (miadmark.loaded.warm; a delivery that needs one meanwhile waits for it)."""
        cfg = self.settings.current()
        profiles = [rule.profile for rule in cfg.rules if rule.action == PROTECT] if cfg is not None else []
        if not profiles:
            return
        try:
            loaded.warm(profiles, str(self.settings.option("device", "auto")))
        except Exception as exc:  # noqa: BLE001 - loaded (or refused, with its reason) at the first export
            self.log(f"watermark engines not loaded ahead ({type(exc).__name__}: {exc})")

    def step(self) -> bool:
        """Deliver the due rows of the oldest job that has some; False when nothing was due."""
        cfg = self.settings.current()
        if cfg is None:
            return False  # fail closed: nothing leaves without rules; the rows wait
        groups = self.outbox.due(DUE_LIMIT)
        if not groups:
            return False
        # a clean-only export does not wait behind a long protect job, which goes STEP_ROWS rows
        # at a time (what was queued meanwhile is looked at between steps)
        job_id, rows = next(((j, r) for j, r in groups if all(x.action != PROTECT for x in r)), groups[0])
        self.deliver(cfg, self.outbox.job(job_id), rows[:STEP_ROWS])
        return True

    # ------------------------------------------------------------------------------ one job's rows
    def retry(self, job: ExportJob) -> dict:
        policy = RetryPolicy.of(RetryConfig(**(self.settings.option("retry", {}) or {})))
        return {**policy.limits(), "max_attempts": policy.max_attempts if job.retry else 1}

    def deliver(self, cfg, job: ExportJob, rows: list[Row]) -> None:
        target = Target(job.target_kind, job.target_name)
        retry = self.retry(job)
        self._decided = {}
        plain, protect = [], []
        for row in rows:
            try:
                header = pydicom.dcmread(io.BytesIO(orthanc.GetDicomForInstance(row.file)), stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001
                if _exists(row.file):
                    self._fail([row], f"instance {row.file} not readable: {type(exc).__name__}", retry)
                else:  # deleted from Orthanc since it was queued
                    self._quarantine(row, f"instance {row.file} is no longer in Orthanc: not sent")
                continue
            decision = decide(cfg, header, destination=job.destination, called_ae=row.called_ae or None,
                              calling_ae=row.calling_ae)
            if decision.action == BLOCK:
                self._quarantine(row, f"blocked by the rules now in force: {decision.reason}", decision)
            elif decision.action == PASS:
                plain.append(row)
                self._decided[row.id] = decision
            else:  # images and lesion sources alike: the export step tells which
                protect.append((row, decision))
                self._decided[row.id] = decision
        try:
            if plain:  # clean originals first
                self._send_plain(target, plain, job, retry)
            if protect:
                self._send_protected(target, protect, job, retry)
        except Down as exc:
            self.log(f"job {job.id}: {target.label} not reachable ({exc}); retried with backoff")

    def _fail(self, rows: list[Row], error: str, retry: dict, permanent: bool = False,
              event: str = SEND_FAILED) -> None:
        for row in rows:
            state = self.outbox.mark_failed(row, error, **retry, permanent=permanent)
            self._audited(event, row, **({"reason": error} if event == PROTECT_DEFERRED else {"error": error}),
                          state=state)
            if state == "dead":
                self._audited(DEAD_LETTER, row, error=error)
                self.log(f"{row.sop_uid} to {row.destination}: dead letter after {row.attempts + 1} attempt(s): "
                         f"{error}")

    def _send_plain(self, target: Target, rows: list[Row], job: ExportJob, retry: dict,
                    lesion_sources: bool = False) -> None:
        """The originals through Orthanc's own route, as an Orthanc job that is polled (a synchronous
        SDK call would hold the Python lock for the whole transfer); lesion_sources: they are SEG /
        RTSTRUCT the export step forwards unchanged."""
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            try:
                outcomes = send_plain(target, [r.file for r in chunk], job.options)
            except Exception as exc:  # noqa: BLE001 - Unreachable, or Orthanc's job failed as a whole
                self._fail(chunk, f"not delivered to {target.label}: {exc}", retry)
                raise Down(str(exc)) from None
            for row, outcome in zip(chunk, outcomes):
                if outcome.ok:
                    self._done(row, row.sop_uid, **({"note": FORWARDED_UNCHANGED} if lesion_sources else {}))
                else:
                    self._fail([row], f"not delivered to {target.label}: {outcome.error}", retry,
                               permanent=outcome.permanent)
            unchanged = [r.sop_uid for r, o in zip(chunk, outcomes) if o.ok] if lesion_sources else []
            for uid in unchanged:
                self.log(f"{uid} to {target.label}: lesion source, forwarded unchanged")
            if unchanged:
                self.outbox.note(job.id, union={"LesionSourcesForwardedUnchanged": unchanged})

    def _send_protected(self, target: Target, items: list, job: ExportJob, retry: dict) -> None:
        """The export step over the rows of a protect route (lesion sources first, so a receiver has the
        masks before the images); batch n+1 is made while batch n is sent (one sender thread, 2 batches
        queued)."""
        signer = self.settings.identity
        device = str(self.settings.option("device", "auto"))
        batch = int(self.settings.option("batch_size", 8))
        saved, fresh = [], []
        for row, decision in items:  # made before a crash or a failed attempt: the same object again
            copy = self._inflight(row)
            if copy is None:
                fresh.append((row, decision))
            else:
                saved.append((row, copy))
        fresh.sort(key=lambda item: item[0].action != "unchanged")  # lesion sources (as planned) first
        sources, unreadable = lesion_sources_of({row.study_uid for row, _ in fresh}) if fresh else ([], [])
        lesions = StudyLesions(sources, [(f"{iid} (Orthanc ID)", reason) for iid, reason in unreadable])
        if sources:
            self.outbox.note(job.id, union={"LesionSourcesUsed": [str(ds.get("SOPInstanceUID", "")) for ds in sources]})
        down: list[str] = []
        made: dict[int, dict] = {}  # row id -> what its `sent` audit line adds (miadmark.audit.outcome_fields)
        outbox: queue.Queue = queue.Queue(maxsize=2)

        def send(ready: list, state: dict) -> None:
            for index, (row, ds) in enumerate(ready):
                if down:
                    self._fail([r for r, _ in ready[index:]], down[0], retry)
                    return
                try:
                    state["delivery"] = state["delivery"] or make_sender(target, job.options,
                                                                         {r.sop_class for r, _ in items})
                    (outcome,) = state["delivery"].send([(row.sop_uid, ds)])
                except Exception as exc:  # noqa: BLE001 - Unreachable (no association / connection), target gone
                    down.append(f"not delivered to {target.label}: {type(exc).__name__}: {exc}")
                    state["delivery"] = None
                    self._fail([r for r, _ in ready[index:]], down[0], retry)
                    return
                if outcome.ok:
                    self._done(row, str(ds.SOPInstanceUID), **made.get(row.id, {}))
                elif outcome.unreachable:
                    down.append(outcome.error)
                    self._fail([r for r, _ in ready[index:]], outcome.error, retry)
                    return
                else:
                    self._fail([row], outcome.error, retry, permanent=outcome.permanent)

        def sender() -> None:
            state = {"delivery": None}
            while (ready := outbox.get()) is not None:
                try:
                    send(ready, state)
                except Exception as exc:  # noqa: BLE001 - keep draining: the protect loop must not block
                    down.append(f"delivery error: {type(exc).__name__}: {exc}")
                    self.log(f"job {job.id}: {down[-1]}")
            if state["delivery"] is not None:
                try:
                    state["delivery"].close()
                except Exception:  # noqa: BLE001
                    pass

        thread = threading.Thread(target=sender, name="miadmark-send", daemon=True)
        thread.start()
        try:
            for start in range(0, len(saved), batch):
                outbox.put(saved[start:start + batch])
            for start in range(0, len(fresh), batch):
                chunk = fresh[start:start + batch]
                if down:  # no protect work for a target that does not answer
                    self._fail([row for row, _ in chunk], down[0], retry)
                    continue
                originals = [orthanc.GetDicomForInstance(row.file) for row, _ in chunk]
                results = export_many(originals, [decision for _, decision in chunk], destination=job.destination,
                                      signer=signer, lesions=lesions, device=device)
                ready, unchanged = [], []
                for (row, _), result in zip(chunk, results):
                    if isinstance(result, Refused):
                        if result.transient:
                            self._fail([row], result.reason, retry, event=PROTECT_DEFERRED)
                        else:
                            self._quarantine(row, f"not sent: {result.reason}")
                    elif isinstance(result, Forwarded) and result.unchanged:
                        unchanged.append(row)  # the original as stored: Orthanc's own route
                    else:
                        self.outbox.keep_inflight(row.id, dataset_to_bytes(result.dataset))
                        ready.append((row, result.dataset))
                        made[row.id] = outcome_fields(result)
                masked = sum(bool(getattr(r, "lesion_masked", False)) for r in results)
                if masked:
                    self.outbox.note(job.id, add={"LesionMasked": masked})
                if unchanged:
                    self._send_plain(target, unchanged, job, retry, lesion_sources=True)
                outbox.put(ready)
        finally:
            outbox.put(None)
            thread.join()
        for uid, reason in lesions.unusable:
            self.log(f"lesion source {uid}: no mask ({reason}); images of its study are protected without it")
        if down:
            raise Down(down[0])

    # ------------------------------------------------------------------------------ state + audit line
    def _done(self, row: Row, sent_uid: str, **extra) -> None:
        self.outbox.mark_done(row.id, sent_uid)
        self._audited(SENT, row, sent_sop_instance_uid=sent_uid, **extra)

    def _quarantine(self, row: Row, reason: str, decision=None) -> None:
        self.outbox.mark_quarantined(row.id, reason)
        self._audited(QUARANTINED, row, decision, reason=reason)

    def _audited(self, event: str, row: Row, decision=None, **extra) -> None:
        """One line in the configuration's audit log (gateway.audit), as the gateway writes it."""
        cfg = self.settings.config
        decision = decision or self._decided.get(row.id)
        if cfg is None:
            return
        try:
            if self._audit is None or self._audit.path != Path(cfg.gateway.audit):
                self._audit = AuditLog(cfg.gateway.audit)
            action = decision.action if decision is not None else ("protect" if row.action == "unchanged"
                                                                   else row.action)
            recipients = decision.recipients if decision is not None else row.recipients
            self._audit.write(event, **export_fields(
                sop_instance_uid=row.sop_uid, study_instance_uid=row.study_uid, destination=row.destination,
                action=action, rule=decision.rule_label if decision is not None else row.rule, way="orthanc",
                calling_ae=row.calling_ae, called_ae=row.called_ae, recipients=recipient_names(recipients),
                profile=resolve_profile(decision.profile if decision is not None else row.profile,
                                        str(self.settings.option("device", "auto"))) if action == PROTECT else None,
                deidentify=decision.deidentify if decision is not None else None), **extra)
        except OSError as exc:  # the delivery stands; the trail's gap is said
            self.log(f"audit log not writable ({exc.strerror or type(exc).__name__}): {event} {row.sop_uid}")

    def _inflight(self, row: Row):
        data = self.outbox.inflight(row.id)
        if data is None:
            return None
        try:
            return dataset_from_bytes(data)
        except Exception:  # noqa: BLE001 - written whole or not at all: damaged on disk, protect again
            self.outbox.drop_inflight(row.id)
            return None


def _exists(instance: str) -> bool:
    try:
        orthanc.RestApiGet(f"/instances/{instance}")
        return True
    except Exception:  # noqa: BLE001 - unknown resource
        return False
