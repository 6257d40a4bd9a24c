"""One reading of a peer's answer for both adapters (dicomnet.outcome): delivered, transient, permanent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dicomnet.outcome import c_store_outcome


@pytest.mark.parametrize("code, ok, permanent", [
    (0x0000, True, False), (0xB000, True, False), (0xB006, True, False), (0xB007, True, False),
    (0x0107, True, False), (0x0116, True, False),  # warnings (PS3.7 C.4): delivered
    (0xA700, False, False), (0xA7FF, False, False), (0x0213, False, False),  # out of resources: retry
    (0x0110, False, True), (0x0122, False, True), (0x0124, False, True), (0x0117, False, True),
    (0xA900, False, True), (0xC000, False, True), (0xCFFF, False, True),  # refused: do not retry
    (0x0999, False, False),  # unknown: retried, bounded by retry.max_attempts
])
def test_status_classes(code, ok, permanent):
    out = c_store_outcome(SimpleNamespace(Status=code))
    assert (out.ok, out.permanent) == (ok, permanent)
    assert out.ok or f"0x{code:04X}" in out.error


def test_no_answer_is_transient():
    out = c_store_outcome(SimpleNamespace())
    assert not out.ok and not out.permanent and "no response" in out.error
