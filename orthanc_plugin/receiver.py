"""Strip protected instances on ingestion (the research-site Orthanc): the core receive policy
(miadmark.receive_policy) translated into what Orthanc should do with an incoming instance.

`Receiver.process(bytes)` answers ("keep", None) for a plain instance the policy stores,
("modify", original_bytes) for a protected one this site can open, ("discard", None) for one it
cannot open or refuses (written to the shared quarantine with a reason file first). Fail closed:
any exception becomes a quarantined discard. No Orthanc import here: unit-testable.

Orthanc authenticates its DICOM callers itself (DicomModalities, DicomCheckCalledAet), so an unset
receiver.plain means "store" here; a duplicate of a stored instance is Orthanc's to handle
(OverwriteInstances: false keeps the first, so a verified original is never replaced).
"""

from __future__ import annotations

from pathlib import Path

from miadmark.audit import AuditLog
from miadmark.config import ReceiverConfig
from miadmark.quarantine import quarantine
from miadmark.receive_policy import QUARANTINE, Outcome, ReceivePolicy

# Encrypted Attributes Sequence (0400,0500), little endian. A plain instance without these bytes
# (and not deflated) cannot carry a restoration record: it is kept without being parsed.
_RECORD_TAG = b"\x00\x04\x00\x05"
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"

KEEP, MODIFY, DISCARD = "keep", "modify", "discard"


def might_be_protected(data: bytes) -> bool:
    """False only when the bytes cannot hold a restoration record (cheap: no parsing). The record
    (0400,0500) sorts before Pixel Data (7FE0,0010): only the bytes before the last possible Pixel
    Data tag are searched, so pixel values cannot fake it (a false positive only costs a parse)."""
    if _DEFLATED in data[:2048]:
        return True
    end = data.rfind(_PIXEL_DATA_TAG)
    return data.find(_RECORD_TAG, 0, end if end >= 0 else len(data)) >= 0


class Receiver:
    def __init__(self, config: ReceiverConfig):
        self.config = config
        self.quarantine_dir = Path(config.quarantine)
        self.counts = {"stripped": 0, "plain": 0, "quarantined": 0, "refused": 0}
        self.policy = ReceivePolicy.from_config(config, plain_default="store")
        self.error = self.policy.keys_error  # keys that did not load: every protected instance is quarantined
        self.audit = AuditLog(config.audit)

    @property
    def plain(self) -> str:
        """The effective plain policy ("store" or "refuse")."""
        return self.policy.plain

    def process(self, data: bytes, origin: str = "") -> tuple[str, bytes | None]:
        try:
            return self._process(data, origin)
        except Exception as exc:  # noqa: BLE001 - fail closed: never store what could not be handled
            self._quarantine(data, Outcome(QUARANTINE, "?", reason=f"internal error ({type(exc).__name__})"), origin)
            return DISCARD, None

    def _process(self, data: bytes, origin: str) -> tuple[str, bytes | None]:
        if self.policy.plain == "store" and not might_be_protected(data):
            self.counts["plain"] += 1
            return KEEP, None
        outcome = self.policy.decide(data)
        if outcome.action == QUARANTINE:
            self._quarantine(data, outcome, origin)
            return DISCARD, None
        fields = {"sop_instance_uid": outcome.uids[2], "received_sop_instance_uid": outcome.received_uid,
                  "study_instance_uid": outcome.uids[0], "origin": origin, "stripped": outcome.stripped}
        if not outcome.stripped:
            self.counts["plain"] += 1
            return KEEP, None
        self.counts["stripped"] += 1
        self.audit.write(outcome.event, **fields)
        return MODIFY, outcome.data

    def _quarantine(self, data: bytes, outcome: Outcome, origin: str) -> None:
        refused_plain = outcome.reason.startswith("plain")
        self.counts["refused" if refused_plain else "quarantined"] += 1
        path = None
        try:
            path = quarantine(self.quarantine_dir, data, reason=outcome.reason, sop_uid=outcome.received_uid,
                              origin=origin)
        finally:  # the instance is discarded either way (Orthanc never stores it); the audit says where it went
            self.audit.write(outcome.event, sop_instance_uid=outcome.received_uid, reason=outcome.reason,
                             origin=origin, quarantine=str(path) if path else None)
