"""What a peer's answer means for one instance, and what happens next: one outcome type and one retry
policy for every way out (the gateway, the Orthanc plugin, the release).

    Outcome        delivered, or failed: transient (retried with backoff), permanent (dead letter at
                   once: no retry can cure it) or unreachable (the peer did not answer at all: the
                   rest of the batch waits too, no work is spent on it)
    RetryPolicy    backoff with jitter, dead letter after max_attempts (the YAML `retry:` block)

DIMSE statuses: warnings count as delivered (PS3.4 B.2.3 / PS3.7 C.4: 0xB000, 0xB006, 0xB007, and the
general warnings 0x0107 attribute list error, 0x0116 attribute value out of range). HTTP (STOW-RS,
an Orthanc peer's /instances): 200 / 204 delivered; 202 / 409 per instance (dicomnet.stow); 401 403
404 408 429 and 5xx mean the server is unusable now (unreachable, retried); any other 4xx refuses the
request (permanent).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Failures that a retry can cure: the peer is short of resources or did not answer at all.
TRANSIENT_CODES = {0x0213, 0xFE00}  # resource limitation, cancelled
# Failures that a retry cannot cure: the peer refuses this object or this sender.
PERMANENT_CODES = {0x0110, 0x0117, 0x0122, 0x0124, 0x0211, 0x0212}
# HTTP answers that mean "not now" rather than "never": retried like a peer that is away.
HTTP_RETRY_LATER = {401, 403, 404, 408, 429}


class Unreachable(Exception):
    """The peer could not be reached at all (no association, no connection, HTTP 5xx, ...): nothing was
    delivered. association_refused: the peer took the connection but rejected the association or never
    answered it (a peer that takes one association at a time does this to a second one)."""

    def __init__(self, message: str = "", *, association_refused: bool = False):
        super().__init__(message)
        self.association_refused = association_refused


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""
    permanent: bool = False  # a failure that retrying cannot cure (dead letter at once)
    unreachable: bool = False  # the peer did not answer at all (the batch's other instances wait too)

    @property
    def kind(self) -> str:
        """delivered | permanent | unreachable | transient"""
        if self.ok:
            return "delivered"
        return "permanent" if self.permanent else "unreachable" if self.unreachable else "transient"


DELIVERED = Outcome(True)


def unreachable(error: str) -> Outcome:
    return Outcome(False, error, unreachable=True)


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


def http_outcome(code: int, what: str = "") -> Outcome:
    """Classify an HTTP answer to a whole request (202 and 409 carry per-instance reasons: dicomnet.stow)."""
    text = f"{what + ': ' if what else ''}HTTP {code}"
    if code in (200, 204):
        return DELIVERED
    if code >= 500 or code in HTTP_RETRY_LATER:
        return unreachable(text)
    if 400 <= code < 500:
        return Outcome(False, f"{text} (refused: not retried)", permanent=True)
    return Outcome(False, text)  # 1xx / 3xx / 202 without a body: retried, bounded by the policy


def backoff_delay(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Wait before attempt `attempts + 1`: base * 2^(attempts-1), capped, times a jitter in [0.5, 1.5)."""
    rng = rng or random
    raw = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    return min(max_s, raw * (0.5 + rng.random()))


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy: a failed attempt waits backoff_delay, a permanent failure or the
    max_attempts-th failure goes to the dead letter. Configured by the `retry:` block
    (miadmark.config.RetryConfig) in the gateway, the plugin and the release alike."""

    max_attempts: int = 20
    base_s: float = 2.0
    max_s: float = 600.0

    @classmethod
    def of(cls, conf) -> "RetryPolicy":
        """From a RetryConfig (or anything with those three fields, or a dict of them)."""
        if isinstance(conf, dict):
            return cls(**{k: conf[k] for k in ("max_attempts", "base_s", "max_s") if k in conf})
        return cls(conf.max_attempts, conf.base_s, conf.max_s)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        return backoff_delay(attempts, self.base_s, self.max_s, rng)

    def state_after(self, attempts: int, permanent: bool = False) -> str:
        """The state of an item after its `attempts`-th failed attempt: 'dead' or 'pending'."""
        return "dead" if permanent or attempts >= self.max_attempts else "pending"

    def limits(self) -> dict:
        return {"max_attempts": self.max_attempts, "base_s": self.base_s, "max_s": self.max_s}
