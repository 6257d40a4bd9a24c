"""Deliver what the outbox holds: one thread (big stack) protects and sends the due rows.

Each row is decided again with the rules in force when it is sent (a rule changed or an Orthanc
restart in between applies; now blocked -> never sent). Then:
  pass / unchanged lesion source -> Orthanc's own route, as an Orthanc job that is polled
  protect -> protect_many in batches, then one C-STORE / POST per instance (senders.py); each
             delivery is committed as done before the next one is sent. The protected object is
             kept on disk from its protection until that commit: a kill -9 or a failed attempt sends
             the same object again (same protected UID: the destination keeps one). Protection that
             fails quarantines the row: never sent raw.
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

import pydicom

from dicomnet.outcome import RetryPolicy
from miadmark.config import RetryConfig
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes
from miadmark.lesion import mask_for, masks_of_sources
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
        plain, protect = [], []
        for row in rows:
            try:
                header = pydicom.dcmread(io.BytesIO(orthanc.GetDicomForInstance(row.file)), stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001
                if _exists(row.file):
                    self._fail([row], f"instance {row.file} not readable: {type(exc).__name__}: {exc}", retry)
                else:  # deleted from Orthanc since it was queued
                    self.outbox.mark_quarantined(row.id, f"instance {row.file} is no longer in Orthanc: not sent")
                continue
            decision = decide(cfg, header, destination=job.destination, called_ae=row.called_ae or None,
                              calling_ae=row.calling_ae)
            if decision.action == BLOCK:
                self.outbox.mark_quarantined(row.id, f"blocked by the rules now in force: {decision.reason}")
            elif row.action == "unchanged" and decision.deidentify:
                # a SEG / RTSTRUCT sent unchanged would carry the identity a de-identified route removes
                self.outbox.mark_quarantined(row.id, "lesion source not forwarded: the route de-identifies and "
                                                     "a lesion source is only ever forwarded unchanged")
            elif decision.action == PASS or (row.action == "unchanged" and decision.action == PROTECT):
                plain.append(row)
            else:
                protect.append((row, decision))
        try:
            if plain:  # lesion sources and clean originals first: a receiver has the masks before the images
                self._send_plain(target, plain, job, retry)
            if protect:
                self._send_protected(target, protect, job, retry)
        except Down as exc:
            self.log(f"job {job.id}: {target.label} not reachable ({exc}); retried with backoff")

    def _fail(self, rows: list[Row], error: str, retry: dict, permanent: bool = False) -> None:
        for row in rows:
            state = self.outbox.mark_failed(row, error, **retry, permanent=permanent)
            if state == "dead":
                self.log(f"{row.sop_uid} to {row.destination}: dead letter after {row.attempts + 1} attempt(s): "
                         f"{error}")

    def _send_plain(self, target: Target, rows: list[Row], job: ExportJob, retry: dict) -> None:
        """The originals through Orthanc's own route, as an Orthanc job that is polled (a synchronous
        SDK call would hold the Python lock for the whole transfer)."""
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            try:
                send_plain(target, [r.file for r in chunk], job.options)
            except Exception as exc:  # noqa: BLE001
                self._fail(chunk, f"not delivered to {target.label}: {exc}", retry)
                raise Down(str(exc)) from None
            for row in chunk:
                self.outbox.mark_done(row.id, row.sop_uid)
            unchanged = [r.sop_uid for r in chunk if r.action == "unchanged"]
            for uid in unchanged:
                self.log(f"{uid} to {target.label}: lesion source, forwarded unchanged")
            if unchanged:
                self.outbox.note(job.id, union={"LesionSourcesForwardedUnchanged": unchanged})

    def _send_protected(self, target: Target, items: list, job: ExportJob, retry: dict) -> None:
        """Protect batch n+1 while batch n is sent (one sender thread, 2 batches queued)."""
        from miadmark import loaded
        from miadmark.engine import DEFAULT_PROFILE  # heavy (torch): imported on first use
        from miadmark.protect import protect_many

        signer = self.settings.identity
        device = str(self.settings.option("device", "auto"))
        batch = int(self.settings.option("batch_size", 8))
        saved, fresh = [], []
        for row, decision in items:  # protected before a crash or a failed attempt: the same object again
            copy = self._inflight(row)
            if copy is None:
                fresh.append((row, decision))
            else:
                saved.append((row, copy))
        sources, unreadable = lesion_sources_of({row.study_uid for row, _ in fresh}) if fresh else ([], [])
        for iid, reason in unreadable:
            self.log(f"lesion source {iid} (Orthanc ID) unreadable ({reason}); its study is protected without it")
        if sources:
            self.outbox.note(job.id, union={"LesionSourcesUsed": [str(ds.get("SOPInstanceUID", "")) for ds in sources]})
        reported: set[str] = set()
        down: list[str] = []
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
                    self.outbox.mark_done(row.id, str(ds.SOPInstanceUID))
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
            groups: dict[tuple, list] = {}
            for row, decision in fresh:
                deid = (decision.deidentify, decision.restore_identity, decision.deidentify_dates)
                groups.setdefault((decision.recipients, decision.profile, deid), []).append(row)
            for (recipients, profile, (deidentify, restore_identity, deidentify_dates)), rows in groups.items():
                try:
                    certs = loaded.certificates(recipients)
                    name = profile or DEFAULT_PROFILE
                    engine = loaded.engine(name, device)
                except Exception as exc:  # noqa: BLE001 - e.g. a certificate file gone: counted, then dead
                    self._fail(rows, f"cannot protect: {type(exc).__name__}: {exc}", retry)
                    continue
                for start in range(0, len(rows), batch):
                    chunk = rows[start:start + batch]
                    if down:  # no protect work for a target that does not answer
                        self._fail(chunk, down[0], retry)
                        continue
                    originals = [dataset_from_bytes(orthanc.GetDicomForInstance(r.file)) for r in chunk]
                    masks = self._lesion_masks(sources, originals, reported)
                    if any(m is not None for m in masks):
                        self.outbox.note(job.id, add={"LesionMasked": sum(m is not None for m in masks)})
                    # destination: the protected UIDs are derived from it (miadmark.uids), so a resend after a
                    # crash is the same instance at the destination even if the in-flight copy was lost
                    results = protect_many(originals, recipients=certs, signer=signer, profile=name,
                                           device=device, lesion_masks=masks, engine=engine,
                                           destination=job.destination, deidentify=deidentify,
                                           restore_identity=restore_identity, deidentify_dates=deidentify_dates)
                    ready = []
                    for row, result in zip(chunk, results):
                        if isinstance(result, Exception):
                            self.outbox.mark_quarantined(row.id, f"not protected, not sent ({type(result).__name__}:"
                                                                 f" {result})")
                        else:
                            self.outbox.keep_inflight(row.id, dataset_to_bytes(result))
                            ready.append((row, result))
                    outbox.put(ready)
        finally:
            outbox.put(None)
            thread.join()
        if down:
            raise Down(down[0])

    def _inflight(self, row: Row):
        data = self.outbox.inflight(row.id)
        if data is None:
            return None
        try:
            return dataset_from_bytes(data)
        except Exception:  # noqa: BLE001 - written whole or not at all: damaged on disk, protect again
            self.outbox.drop_inflight(row.id)
            return None

    def _lesion_masks(self, sources: list, images: list, reported: set[str]) -> list:
        """One mask (or None) per image from the study's SEG / RTSTRUCT; a source that gives none is
        logged (once): its lesions may be under the watermark, as with `miadmark protect`."""
        if not sources:
            return [None] * len(images)
        masks, unusable = masks_of_sources(sources, images)
        for source, reason in unusable:
            uid = str(source.get("SOPInstanceUID", ""))
            if uid not in reported:
                reported.add(uid)
                self.log(f"lesion source {uid}: no mask ({reason}); images of its study are protected without it")
        return [mask_for(ds, masks) for ds in images]


def _exists(instance: str) -> bool:
    try:
        orthanc.RestApiGet(f"/instances/{instance}")
        return True
    except Exception:  # noqa: BLE001 - unknown resource
        return False
