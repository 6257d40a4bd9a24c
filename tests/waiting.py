"""Waiting on real processes and sockets in tests: a free local port, and polling a condition."""

from __future__ import annotations

import time

from dicomnet.ports import free_port  # noqa: F401 - the one home; tests import it from here


def wait_for(predicate, timeout: float = 60.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last value either way."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
