"""The Ray actor that protects: one per worker, engine(s) and keys loaded once.

prepare(batch) fetches each instance by WADO-RS, asks the rules what this destination may get,
protects the `protect` ones in one core call (miadmark.protect.protect_many: a series is one engine
batch), and *holds* the results; it answers the SOP Instance UID each original will be sent as, so
the driver can record it before anything leaves. send(batch) then stores what it holds at the
destination. Two steps, so that after a crash the manifest knows which UID to look for there.

Instances that cannot be fetched or protected are outcomes (failed, with the reason), never
exceptions: one bad instance never stops a batch.
"""

from __future__ import annotations

import inspect
import logging

import ray
from pydicom.dataset import Dataset

from miadmark.config import load_config
from miadmark import loaded
from miadmark.engine import DEFAULT_PROFILE
from miadmark.errors import MiadmarkError
from miadmark.lesion import is_lesion_source
from miadmark.protect import protect_many
from miadmark.rules import BLOCK, PASS, decide

from .fetching import fetch
from .job import ReleaseJob
from .listing import InstanceRef
from .manifest import FAILED, PENDING, SENT, SKIPPED, TODO
from .patience import Unavailable
from .client import dicomweb_client
from .sink import open_sink

log = logging.getLogger(__name__)
# Stable UIDs (core): protect derives the new SOP Instance UID from the original and the destination.
STABLE_UIDS = "destination" in inspect.signature(protect_many).parameters


def outcome(ref: InstanceRef, state: str, *, action: str | None = None, sent_uid: str | None = None,
            reason: str | None = None, unavailable: bool = False) -> dict:
    return {"sop": ref.sop, "state": state, "action": action, "sent_uid": sent_uid, "reason": reason,
            "unavailable": unavailable}


class Protector:
    def __init__(self, job: ReleaseJob):
        from miadmark.cli import quiet_pydicom

        quiet_pydicom()
        self.job = job
        self.signer = loaded.identity(job.sign_key, job.sign_cert, job.passphrase_file)
        self.config = load_config(job.config) if job.config else None
        self.source = dicomweb_client(job.source, timeout_s=job.timeout_s)
        self.sink = open_sink(job.dest, **job.sink_options())
        self.device = job.device
        if job.device == "auto":
            self.device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"
        self.held: dict[int, list[tuple[InstanceRef, Dataset]]] = {}

    def ready(self) -> str:
        """Load the default engine now: startup cost and errors show before the first batch."""
        loaded.engine(self.job.profile or DEFAULT_PROFILE, self.device)
        return self.device

    # ---- step 1: fetch, decide, protect, hold

    def prepare(self, batch_id: int, refs: list[InstanceRef]) -> list[dict]:
        outcomes, to_protect, held = [], {}, []
        for ref in refs:
            try:
                ds = fetch(self.source, ref, self.job.patience_s)
            except Unavailable as exc:
                outcomes.append(outcome(ref, TODO, reason=str(exc), unavailable=True))
                continue
            except Exception as exc:  # noqa: BLE001 - a bad instance is recorded, never stops the release
                outcomes.append(outcome(ref, FAILED, reason=f"fetch failed: {type(exc).__name__}: {_short(exc)}"))
                continue
            if str(ds.get("SOPInstanceUID", "")) != ref.sop:
                outcomes.append(outcome(ref, FAILED, reason="source returned another SOP Instance UID"))
                continue
            action, recipients, profile, why = self._decide(ds)
            if action == BLOCK:
                outcomes.append(outcome(ref, SKIPPED, action=BLOCK, reason=why))
            elif action == PASS or is_lesion_source(ds):  # SEG / RTSTRUCT leave unchanged, as in the gateway
                held.append((ref, ds))
                outcomes.append(outcome(ref, PENDING, action="pass" if action == PASS else "lesion-source",
                                        sent_uid=ref.sop, reason=why))
            else:
                to_protect.setdefault((recipients, profile), []).append((ref, ds))
        for (recipients, profile), items in to_protect.items():
            results = self._protect([ds for _, ds in items], recipients, profile)
            for (ref, _), result in zip(items, results):
                if isinstance(result, Exception):
                    outcomes.append(outcome(ref, FAILED, action="protect", reason=_short(result)))
                else:
                    held.append((ref, result))
                    outcomes.append(outcome(ref, PENDING, action="protect", sent_uid=str(result.SOPInstanceUID)))
        if held:
            self.held[batch_id] = held
        return outcomes

    def _decide(self, ds: Dataset) -> tuple[str, tuple[str, ...], str, str]:
        """(action, recipient certificate paths, profile, why) for this instance and destination."""
        if self.config is None:
            return "protect", self.job.recipients, self.job.profile or DEFAULT_PROFILE, "no rules: protect"
        decision = decide(self.config, ds, destination=self.job.dest_name)
        profile = decision.profile or self.job.profile or DEFAULT_PROFILE
        return decision.action, tuple(str(p) for p in decision.recipients), profile, decision.reason

    def _protect(self, datasets: list[Dataset], recipients: tuple[str, ...], profile: str) -> list:
        try:
            certificates = loaded.certificates(list(recipients))
            extra = {"destination": self.job.dest_name} if STABLE_UIDS else {}
            return protect_many(datasets, recipients=certificates, signer=self.signer,
                                engine=loaded.engine(profile, self.device), **extra)
        except (MiadmarkError, ValueError, OSError) as exc:  # keys or profile unusable: every instance fails
            return [MiadmarkError(f"cannot protect: {_short(exc)}")] * len(datasets)

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
        return results


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
