"""Strip protected instances on ingestion (the research-site Orthanc).

`Receiver.process(bytes)` answers what Orthanc should do with an incoming instance:
("keep", None) for a plain instance, ("modify", original_bytes) for a protected one this site can
open, ("discard", None) for one it cannot open (written to quarantine with a reason file first).
Fail closed: any exception becomes a quarantined discard. No Orthanc import here: unit-testable.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from miadmark.config import ReceiverConfig
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, write_atomic
from miadmark.errors import MiadmarkError
from miadmark.keys import load_certificates, load_identity, read_passphrase
from miadmark.protect import is_protected, strip

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
        self.error: str | None = None  # keys that did not load: every protected instance is quarantined
        try:
            self.keyring = [load_identity(kp.key, kp.cert, read_passphrase(kp.passphrase_file)) for kp in config.keys]
            self.trust = load_certificates(config.trust) if config.trust is not None else None
        except MiadmarkError as exc:
            self.keyring, self.trust, self.error = [], [], str(exc)

    def process(self, data: bytes, origin: str = "") -> tuple[str, bytes | None]:
        try:
            return self._process(data, origin)
        except Exception as exc:  # noqa: BLE001 - fail closed: never store what could not be handled
            self._quarantine(data, f"internal error: {type(exc).__name__}: {str(exc)[:200]}", origin)
            return DISCARD, None

    def _process(self, data: bytes, origin: str) -> tuple[str, bytes | None]:
        if not might_be_protected(data):
            return self._plain(None, origin)
        try:
            ds = dataset_from_bytes(data)
        except MiadmarkError as exc:
            self._quarantine(data, str(exc), origin)
            return DISCARD, None
        if not is_protected(ds):
            return self._plain(ds, origin)
        uid = str(ds.get("SOPInstanceUID", "?"))
        if self.error is not None:
            self._quarantine(data, f"receiver keys not loaded: {self.error}", origin, uid)
            return DISCARD, None
        try:
            original = strip(ds, keyring=self.keyring, trust=self.trust)
            out = dataset_to_bytes(original)
        except MiadmarkError as exc:
            self._quarantine(data, f"{type(exc).__name__}: {exc}", origin, uid)
            return DISCARD, None
        self.counts["stripped"] += 1
        self._audit({"action": "stripped", "received_sop": uid, "stored_sop": str(original.get("SOPInstanceUID", "?")),
                     "origin": origin})
        return MODIFY, out

    def _plain(self, ds, origin: str) -> tuple[str, bytes | None]:
        if self.config.plain == "refuse":
            self.counts["refused"] += 1
            uid = str(ds.get("SOPInstanceUID", "?")) if ds is not None else "?"
            self._audit({"action": "refused_plain", "received_sop": uid, "origin": origin})
            return DISCARD, None
        self.counts["plain"] += 1
        return KEEP, None

    def _quarantine(self, data: bytes, reason: str, origin: str, uid: str = "?") -> None:
        self.counts["quarantined"] += 1
        name = time.strftime("%Y%m%dT%H%M%S") + "-" + hashlib.sha256(data).hexdigest()[:16]
        try:
            write_atomic(data, self.quarantine_dir / f"{name}.dcm", mode=0o600)
            write_atomic((json.dumps({"reason": reason, "sop_instance_uid": uid, "origin": origin,
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n").encode(),
                         self.quarantine_dir / f"{name}.reason.json")
        finally:
            self._audit({"action": "quarantined", "received_sop": uid, "reason": reason, "origin": origin,
                         "file": f"{name}.dcm"})

    def _audit(self, record: dict) -> None:
        if self.config.audit is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        path = Path(self.config.audit)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError:
            pass
