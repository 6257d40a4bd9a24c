"""The C-STORE statuses our SCPs answer. The network plumbing itself is dicomnet's (shared with the
Orthanc plugin); the meaning of a peer's answer is dicomnet.outcome's."""

from __future__ import annotations

SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124  # a `block` rule (or no rule) for this traffic
OUT_OF_RESOURCES = 0xA700  # could not write the spool / queue / store: the sender retries
PROCESSING_FAILURE = 0x0110  # the receiver's one generic refusal (no oracle): the sender stops
CANNOT_UNDERSTAND = 0xC000  # an unreadable header
