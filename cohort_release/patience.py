"""Waiting out a source or destination that went away: exponential backoff with jitter, then give up.

Only "not there right now" is waited for (no connection, timeout, HTTP 429/502/503/504); any other
answer is the instance's own failure and is returned at once. Reads (WADO-RS, QIDO-RS) go through
here; sending (STOW-RS) is dicomnet's (cohort_release.sink). The waits are dicomnet's backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import requests

from dicomnet.outcome import backoff_delay

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = {429, 502, 503, 504}


class Unavailable(Exception):
    """The service stayed away longer than the patience allowed."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    return False


def patiently(call: Callable[[], T], what: str, patience_s: float, *, first_wait_s: float = 1.0,
              max_wait_s: float = 60.0) -> T:
    """call(), retried while it fails transiently, for at most patience_s; then Unavailable(what)."""
    deadline = time.monotonic() + patience_s
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted into transient / not below
            if not is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{what} unreachable for {patience_s:.0f} s ({type(exc).__name__})") from exc
            failures += 1
            pause = min(backoff_delay(failures, first_wait_s, max_wait_s), left)
            log.warning("%s unreachable (%s), retrying in %.1f s", what, type(exc).__name__, pause)
            time.sleep(pause)
