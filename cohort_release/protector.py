"""The Ray actor that protects: one per worker, engine(s) and keys loaded once.

prepare(batch) fetches each instance by WADO-RS, asks the rules what this destination may get, and
hands the batch to the core's export step (miadmark.export.export_many: protection, de-identification
as the rule says, lesion sources forwarded as the gateway forwards them; a series is one engine batch),
and *holds* the results; it answers the SOP Instance UID each original will be sent as, so the driver
can record it before anything leaves. Lesion masks come from the SEG / RTSTRUCT of the same batch.
send(batch) then stores what it holds at the destination. Two steps, so that after a crash the
manifest knows which UID to look for there.

Instances that cannot be fetched or protected are outcomes (failed, with the reason), never
exceptions: one bad instance never stops a batch.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from dataclasses import replace

import ray
from pydicom.dataset import Dataset

import dicomnet.metrics  # registers the audit hook: a release counts under the gateway's metric names
from dicomnet.metrics import observe_protect

from miadmark.audit import (BLOCKED, PROTECT_DEFERRED, QUARANTINED, SEND_FAILED, AuditLog, export_fields,
                            outcome_fields, recipient_names)
from miadmark.audit import SENT as SENT_EVENT
from miadmark.config import load_config
from miadmark import loaded
from miadmark.engine import DEFAULT_PROFILE, resolve_profile
from miadmark.errors import MiadmarkError
from miadmark.export import Forwarded, Refused, export_many, source_uid_of
from miadmark.lesion import StudyLesions, lesion_kind
from miadmark.rules import BLOCK, PROTECT, Decision, decide

from .fetching import fetch
from .job import ReleaseJob
from .listing import InstanceRef
from .manifest import FAILED, PENDING, SENT, SKIPPED, TODO
from .patience import Unavailable
from .client import dicomweb_client
from .sink import open_sink

log = logging.getLogger(__name__)


def outcome(ref: InstanceRef, state: str, *, action: str | None = None, sent_uid: str | None = None,
            reason: str | None = None, unavailable: bool = False) -> dict:
    return {"sop": ref.sop, "state": state, "action": action, "sent_uid": sent_uid, "reason": reason,
            "unavailable": unavailable}


class Protector:
    def __init__(self, job: ReleaseJob):
        from miadmark.cli import quiet_pydicom

        quiet_pydicom()
        self.job = job
        if job.metrics and job.metrics_host == socket.gethostname():
            dicomnet.metrics.join_multiprocess(job.metrics)  # before this process counts anything
        self.signer = loaded.identity(job.sign_key, job.sign_cert, job.passphrase_file)
        self.config = load_config(job.config) if job.config else None
        self.source = dicomweb_client(job.source, timeout_s=job.timeout_s)
        self.sink = open_sink(job.dest, **job.sink_options())
        self.device = job.device
        if job.device == "auto":
            self.device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"
        self.held: dict[int, list[tuple[InstanceRef, Dataset]]] = {}
        self.audit = AuditLog(job.audit) if job.audit else None
        self._lines: dict[str, dict] = {}  # original SOP UID -> its audit fields, from decision to sending

    def ready(self) -> str:
        """Load the default engine now: startup cost and errors show before the first batch."""
        loaded.engine(self.job.profile or DEFAULT_PROFILE, self.device)
        return self.device

    # ---- step 1: fetch, decide, protect, hold

    def prepare(self, batch_id: int, refs: list[InstanceRef]) -> list[dict]:
        outcomes, fetched = [], []
        for ref in refs:
            try:
                ds = fetch(self.source, ref, self.job.patience_s)
            except Unavailable as exc:
                outcomes.append(outcome(ref, TODO, reason=str(exc), unavailable=True))
                continue
            except MiadmarkError as exc:  # names the element, never its value
                reason = f"fetch failed: {type(exc).__name__}: {exc}"
                outcomes.append(outcome(ref, FAILED, reason=reason))
                self._write(QUARANTINED, export_fields(sop_instance_uid=ref.sop, study_instance_uid=ref.study,
                                                       destination=self.job.dest_name, action="", rule="",
                                                       way="release"), reason=reason)
                continue
            except Exception as exc:  # noqa: BLE001 - a bad instance is recorded, never stops the release
                outcomes.append(outcome(ref, FAILED, reason=f"fetch failed: {type(exc).__name__}: {_short(exc)}"))
                continue
            if source_uid_of(ds) != ref.sop:
                outcomes.append(outcome(ref, FAILED, reason="source returned another SOP Instance UID"))
                continue
            fetched.append((ref, ds))
        exported, held = self.export(fetched)
        if held:
            self.held[batch_id] = held
        return outcomes + exported

    def export(self, fetched: list[tuple[InstanceRef, Dataset]]) -> tuple[list[dict], list]:
        """The core's export step over a batch, translated: (outcomes, what to hold for send)."""
        decisions = [self._decide(ds) for _, ds in fetched]
        datasets = [ds for _, ds in fetched]
        started = time.monotonic()
        results = export_many(datasets, decisions, destination=self.job.dest_name, signer=self.signer,
                              lesions=StudyLesions(_lesion_sources(datasets)), device=self.device)
        seconds = time.monotonic() - started
        outcomes, held, protected = [], [], Counter()
        for (ref, ds), decision, result in zip(fetched, decisions, results):
            fields = self._fields(ref, ds, decision)
            if isinstance(result, Refused) and result.blocked:
                outcomes.append(outcome(ref, SKIPPED, action=BLOCK, reason=decision.reason))
                self._write(BLOCKED, fields, reason=decision.reason)
                continue
            if isinstance(result, Refused):
                outcomes.append(outcome(ref, TODO if result.transient else FAILED, action=decision.action,
                                        reason=result.reason))
                self._write(PROTECT_DEFERRED if result.transient else QUARANTINED, fields, reason=result.reason)
                continue
            self._lines[ref.sop] = {**fields, **outcome_fields(result)}
            if isinstance(result, Forwarded):
                held.append((ref, result.dataset))
                outcomes.append(outcome(ref, PENDING, action="lesion-source" if result.lesion_source else "pass",
                                        sent_uid=str(result.dataset.SOPInstanceUID), reason=decision.reason))
            else:
                held.append((ref, result.dataset))
                outcomes.append(outcome(ref, PENDING, action="protect", sent_uid=str(result.dataset.SOPInstanceUID)))
                protected[fields["profile"]] += 1
        for profile, count in protected.items():  # the gateway's protect_seconds and engine_device, per profile
            observe_protect(profile, seconds * count / protected.total(), count, self.device)
        return outcomes, held

    def _decide(self, ds: Dataset) -> Decision:
        """The rules' decision for this instance and destination (without rules: protect for --recipient);
        the job's --profile where the rule names none."""
        profile = self.job.profile or DEFAULT_PROFILE
        if self.config is None:
            return Decision(PROTECT, None, (self.job.dest_name,), recipients=tuple(self.job.recipients),
                            profile=profile, reason="no rules: protect")
        decision = decide(self.config, ds, destination=self.job.dest_name)
        return replace(decision, profile=decision.profile or profile)

    # ---- step 2: send what is held

    def send(self, batch_id: int) -> list[dict] | None:
        """Outcomes of the held batch; None when this actor does not hold it (it was restarted)."""
        held = self.held.pop(batch_id, None)
        if held is None:
            return None
        try:
            stored = self.sink.store([ds for _, ds in held])
        except Unavailable as exc:  # may have arrived or not: stays pending, the driver asks the destination
            return [outcome(ref, PENDING, reason=str(exc), unavailable=True) for ref, _ in held]
        except Exception as exc:  # noqa: BLE001 - outcome unknown: pending, settled by the driver
            return [outcome(ref, PENDING, reason=f"send outcome unknown: {type(exc).__name__}: {_short(exc)}")
                    for ref, _ in held]
        results = []
        for ref, ds in held:
            reason = stored.get(str(ds.SOPInstanceUID), "destination did not answer for it")
            results.append(outcome(ref, SENT) if reason is None else outcome(ref, FAILED, reason=reason))
            fields = self._lines.pop(ref.sop, {"sop_instance_uid": ref.sop, "destination": self.job.dest_name})
            if reason is None:
                self._write(SENT_EVENT, fields, sent_sop_instance_uid=str(ds.SOPInstanceUID))
            else:
                self._write(SEND_FAILED, fields, error=reason)
        return results

    # ---- the audit trail (miadmark.audit: the gateway's events and fields)

    def _fields(self, ref: InstanceRef, ds: Dataset, decision: Decision) -> dict:
        protects = decision.action == PROTECT
        return export_fields(sop_instance_uid=ref.sop, study_instance_uid=ref.study, destination=self.job.dest_name,
                             action=decision.action, rule=decision.rule_label, way="release",
                             recipients=recipient_names(decision.recipients),
                             profile=resolve_profile(decision.profile, self.device) if protects else None,
                             deidentify=decision.deidentify)

    def _write(self, event: str, fields: dict, **extra) -> None:
        if self.audit is None:
            return
        try:
            self.audit.write(event, **fields, **extra)
        except OSError as exc:  # the release stands; the trail's gap is said
            log.error("audit log not writable (%s): %s %s", exc.strerror or type(exc).__name__, event,
                      fields.get("sop_instance_uid"))


def _lesion_sources(datasets: list[Dataset]) -> list[Dataset]:
    sources = []
    for ds in datasets:
        try:
            if lesion_kind(ds) is not None:
                sources.append(ds)
        except Exception:  # noqa: BLE001 - the export step refuses that instance, with the reason
            continue
    return sources


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
