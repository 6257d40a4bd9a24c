"""What a peer's answer means for one instance: delivered, worth retrying, or never going to succeed.

Both adapters decide with these functions, so a status means the same thing in the gateway and in the
Orthanc plugin. Warnings count as delivered (PS3.4 B.2.3 / PS3.7 C.4: 0xB000, 0xB006, 0xB007, and the
general warnings 0x0107 attribute list error, 0x0116 attribute value out of range).
"""

from __future__ import annotations

from dataclasses import dataclass

# Failures that a retry can cure: the peer is short of resources or did not answer at all.
TRANSIENT_CODES = {0x0213, 0xFE00}  # resource limitation, cancelled
# Failures that a retry cannot cure: the peer refuses this object or this sender.
PERMANENT_CODES = {0x0110, 0x0117, 0x0122, 0x0124, 0x0211, 0x0212}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""
    permanent: bool = False  # a failure that retrying cannot cure (dead letter at once)


DELIVERED = Outcome(True)


def c_store_outcome(status) -> Outcome:
    """Classify a C-STORE response (a pydicom Dataset with Status, or None when none came)."""
    code = getattr(status, "Status", None)
    if code is None:
        return Outcome(False, "no response (association aborted or timed out)")
    out = status_outcome(int(code))
    comment = peer_comment(getattr(status, "ErrorComment", None)) if not out.ok else ""
    return Outcome(out.ok, f"{out.error}: {comment}", out.permanent) if comment else out


def peer_comment(value) -> str:
    """The peer's Error Comment (LO, 64 characters) fit for a log line and the dead letter, or ""."""
    text = "".join(c if c.isprintable() else "?" for c in str(value or "").strip())
    return text[:64]


def status_outcome(code: int) -> Outcome:
    if code == 0x0000 or (code & 0xF000) == 0xB000 or code in (0x0107, 0x0116):
        return DELIVERED
    text = f"status 0x{code:04X}"
    if (code & 0xFF00) == 0xA700 or code in TRANSIENT_CODES:
        return Outcome(False, f"{text} (out of resources: will retry)")
    if (code & 0xFF00) == 0xA900 or (code & 0xF000) == 0xC000 or code in PERMANENT_CODES:
        return Outcome(False, f"{text} (refused: not retried)", permanent=True)
    return Outcome(False, text)  # unknown: retried, bounded by retry.max_attempts
