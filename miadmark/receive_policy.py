"""The receive policy of a key-holding site, one function for both adapters (receiving node, Orthanc plugin).

    decide(received bytes, keys + trust + settings, what is already stored) -> Outcome
        protected, opens with our keys and trust  -> STORE the bit-exact original (stripped=True)
        plain, plain policy "store"               -> STORE as received
        plain, plain policy "refuse"              -> QUARANTINE ("plain instance refused")
        cannot open (no key, tampered, untrusted signer, unreadable, UIDs unusable as names)
                                                  -> QUARANTINE with the reason (the peer gets one
                                                     generic status: no padding or signature oracle)
        an instance with these UIDs already stored: identical content -> DUPLICATE (idempotent success),
                                                  different content -> CONFLICT (quarantined, never replaces)

No network and no store I/O here: the adapter stores (and answers its peer); the quarantine writer and
the audit log are the shared ones in miadmark.quarantine / miadmark.audit. Reasons name the element or
the check that failed, never an element's value.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import dcmread

from .config import ReceiverConfig
from .dicomio import dataset_from_bytes
from .errors import MiadmarkError

STORE, DUPLICATE, QUARANTINE = "store", "duplicate", "quarantine"
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

Uids = tuple[str, str, str]  # study, series, SOP instance


def safe_uid(uid) -> str | None:
    """The UID if it is a well-formed DICOM UID (safe as a file name), else None."""
    uid = str(uid or "").strip().rstrip("\x00")
    return uid if len(uid) <= 64 and UID_RE.match(uid) else None


@dataclass(frozen=True)
class Outcome:
    action: str  # STORE | DUPLICATE | QUARANTINE
    received_uid: str  # the SOP Instance UID as received ("?" when unreadable)
    uids: Uids | None = None  # of what is (or would be) stored: the original's UIDs
    data: bytes | None = None  # what to store (STORE only)
    stripped: bool = False  # a protected instance opened with our keys
    reason: str = ""  # QUARANTINE only; local, never sent to the peer
    conflict: bool = False  # QUARANTINE because different content already holds these UIDs
    category: str = "refused"  # QUARANTINE only: the value-free reason the peer is told (peer_reason)

    @property
    def peer_reason(self) -> str:
        """What the sender may be told (a C-STORE Error Comment): a category, never a value or a UID, and
        one category for every protected instance that does not open (no padding or signature oracle)."""
        if self.action != QUARANTINE:
            return ""
        return "conflict" if self.conflict else self.category

    @property
    def event(self) -> str:
        """The audit event name."""
        if self.action == QUARANTINE:
            return "conflict" if self.conflict else "quarantined"
        if self.action == DUPLICATE:
            return "duplicate"
        return "stored"  # with stripped: true (the original of a protected instance) or false (plain)


@dataclass
class ReceivePolicy:
    keyring: list
    trust: list | None  # None: any signer accepted (not advised)
    plain: str = "refuse"  # "store" | "refuse"
    keys_error: str | None = None  # keys that did not load: protected instances are quarantined

    @classmethod
    def from_config(cls, rx: ReceiverConfig, *, plain_default: str = "refuse") -> "ReceivePolicy":
        """Load the keyring and trust list once. Key errors do not raise: they are reported by
        keys_error and every protected instance is quarantined with that reason (fail closed)."""
        from . import loaded
        plain = rx.plain or ("store" if rx.allow_calling else plain_default)
        try:
            keyring = [loaded.identity(k.key, k.cert, k.passphrase_file) for k in rx.keys]
            trust = loaded.certificates(rx.trust) if rx.trust is not None else None
        except MiadmarkError as exc:
            return cls([], [], plain, str(exc))
        return cls(keyring, trust, plain)

    def decide(self, data: bytes, stored: Callable[[Uids], bytes | None] | None = None) -> Outcome:
        """stored(uids) -> the bytes already stored under these UIDs, or None."""
        try:
            return self._decide(data, stored)
        except Exception as exc:  # noqa: BLE001 - fail closed: an unexpected error quarantines
            return Outcome(QUARANTINE, "?", reason=f"internal error ({type(exc).__name__})")

    def _decide(self, data: bytes, stored) -> Outcome:
        try:
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable header
            return Outcome(QUARANTINE, "?", reason=f"unreadable DICOM ({type(exc).__name__})",
                           category="unreadable")
        received = safe_uid(header.get("SOPInstanceUID")) or "?"
        if "EncryptedAttributesSequence" in header:
            if self.keys_error is not None:
                return Outcome(QUARANTINE, received, reason=f"receiver keys not loaded: {self.keys_error}",
                               category="not opened")
            from .protect import strip_bytes
            try:  # the original file byte for byte, as the protecting site read it
                out, stripped = strip_bytes(dataset_from_bytes(data), keyring=self.keyring, trust=self.trust), True
                original = dcmread(io.BytesIO(out), stop_before_pixels=True)
            except MiadmarkError as exc:
                return Outcome(QUARANTINE, received, reason=f"{type(exc).__name__}: {exc}",
                               category="not opened")
        elif self.plain != "store":
            return Outcome(QUARANTINE, received, reason="plain (unprotected) instance refused: receiver.plain "
                                                       "is 'refuse' (or unset with no allow_calling)",
                           category="plain refused")
        else:
            original, out, stripped = header, data, False
        uids = tuple(safe_uid(original.get(k)) for k in UID_KEYWORDS)
        if not all(uids):
            bad = [k for k, u in zip(UID_KEYWORDS, uids) if not u]
            return Outcome(QUARANTINE, received, reason=f"missing or malformed {', '.join(bad)}",
                           category="malformed UIDs")
        outcome = Outcome(STORE, received, uids, out, stripped)
        return self.settle(outcome, stored(uids)) if stored is not None else outcome

    @staticmethod
    def settle(outcome: Outcome, existing: bytes | None) -> Outcome:
        """A STORE outcome against what is already stored under its UIDs (an adapter calls this under
        its store lock, so that check and write are one step): nothing -> STORE, the same dataset ->
        DUPLICATE, a different one -> CONFLICT (quarantined; a stored instance is never replaced)."""
        if outcome.action != STORE or existing is None:
            return outcome
        if _dataset_part(existing) == _dataset_part(outcome.data):
            return Outcome(DUPLICATE, outcome.received_uid, outcome.uids, stripped=outcome.stripped)
        return Outcome(QUARANTINE, outcome.received_uid, outcome.uids, stripped=outcome.stripped, conflict=True,
                       reason=f"conflict: SOP Instance {outcome.uids[2]} is already stored with different content "
                              "(never replaced)")


def _dataset_part(data: bytes) -> bytes:
    """The encoded dataset without preamble and File Meta (the meta is each writer's own)."""
    if data[128:132] != b"DICM":
        return data
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[144 + meta_length:]
