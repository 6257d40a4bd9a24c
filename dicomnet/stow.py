"""STOW-RS sending for both adapters (PS3.18 10.5): one multipart POST per batch, outcome per instance.

    200 / 204           every instance stored
    202                 partial success: those in FailedSOPSequence (0008,1198) failed, the rest stored
    409                 none stored: those in FailedSOPSequence failed for their own reason; the others
                        were refused only with them, and are retried (transient)
    401 403 404 408 429 5xx, no answer    the server is unusable now: Unreachable (retried later)
    other 4xx           the request is refused: permanent

A failure reason (0008,1197) is read as a DIMSE status (dicomnet.outcome): 0xA7xx (out of resources)
is transient, a refusal (0xA9xx, 0xCxxx, 0x0110, ...) permanent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import requests

from .outcome import DELIVERED, Outcome, Unreachable, http_outcome, status_outcome


@dataclass(frozen=True)
class StowTarget:
    url: str  # the POST URL (…/studies)
    name: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    timeout_s: float = 60.0
    verify: bool | str = True  # TLS server verification, or a CA bundle path
    cert: str | tuple[str, str] | None = None  # client certificate (and key) for mutual TLS

    @property
    def label(self) -> str:
        return self.name or self.url


def multipart(instances: list[bytes]) -> tuple[bytes, str]:
    boundary = "miadmark-" + uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
             for data in instances]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f'multipart/related; type="application/dicom"; boundary={boundary}'


def post_instances(target: StowTarget, instances: list[tuple[str, bytes]],
                   session: requests.Session | None = None) -> list[Outcome]:
    """POST (SOP Instance UID, encoded file) pairs; one Outcome per instance, or Unreachable."""
    if not instances:
        return []
    body, content_type = multipart([data for _, data in instances])
    headers = {**target.headers, "Content-Type": content_type, "Accept": "application/dicom+json"}
    http = session or requests
    try:
        resp = http.post(target.url, data=body, headers=headers, auth=target.auth, timeout=target.timeout_s,
                         verify=target.verify, cert=target.cert)
    except requests.RequestException as exc:
        raise Unreachable(f"STOW-RS to {target.label}: {type(exc).__name__}") from None
    code = resp.status_code
    if code in (202, 409):
        failed = failed_instances(resp)
        if failed is None:  # unreadable body: nothing known to be stored, retry all
            return [Outcome(False, f"HTTP {code} without a readable failure list") for _ in instances]
        if code == 409 and not failed.keys() & {uid for uid, _ in instances}:  # no instance named: all refused
            return [Outcome(False, "HTTP 409: none stored (refused: not retried)", permanent=True)
                    for _ in instances]
        return [_failed(failed[uid], code) if uid in failed else
                (DELIVERED if code == 202 else Outcome(False, "HTTP 409: not stored, refused with others of"
                                                              " its request (will retry)"))
                for uid, _ in instances]
    whole = http_outcome(code, f"STOW-RS to {target.label}")
    if whole.unreachable:
        raise Unreachable(whole.error)
    return [whole for _ in instances]


def _failed(reason: int | None, http_code: int) -> Outcome:
    if reason is None:
        return Outcome(False, f"HTTP {http_code}: refused by the STOW-RS server", permanent=True)
    out = status_outcome(reason)
    return Outcome(False, f"HTTP {http_code}: {out.error}", permanent=out.permanent or out.ok)


def failed_instances(resp) -> dict[str, int | None] | None:
    """{SOP Instance UID: FailureReason or None} from a DICOM JSON response body; None if unreadable."""
    try:
        body = resp.json()
        if isinstance(body, list):  # some servers answer a one-element array
            body = body[0] if body else {}
        out = {}
        for item in (body.get("00081198") or {}).get("Value") or []:
            uid = item["00081155"]["Value"][0]
            reason = (item.get("00081197") or {}).get("Value") or [None]
            out[str(uid)] = int(reason[0]) if reason[0] is not None else None
        return out
    except Exception:  # noqa: BLE001 - any malformed body
        return None
