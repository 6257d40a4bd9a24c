"""Shared fixtures: the real data in ../shared/data (read in place) and session-wide site keys.

MIADMARK_REQUIRE_ALL=1 (set by .ci/run): a test that would be skipped (Orthanc, Chromium, ../shared/data,
committed weights or a package missing) fails instead, naming what is missing, and so does a skip at
collection: CI cannot pass by skipping. Without it a developer's partial machine still skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DICOM_DATA = SHARED_DATA / "dicom"

# Files that must be refused: their pixel data does not decode (the *_fixed twins do).
UNDECODABLE = {"JPEG-lossy.dcm", "RG2_JPLY.dcm", "966.dcm"}


REQUIRE_ALL = os.environ.get("MIADMARK_REQUIRE_ALL") == "1"


def all_dicom_files() -> list[Path]:
    return sorted(p for p in DICOM_DATA.rglob("*.dcm"))


def shared_params(values: list) -> list:
    """Parameters read from ../shared/data at import time. Without the data: one parameter (None) for a
    test that also takes the shared_data fixture, which then fails, instead of an empty parametrization
    that pytest would skip in silence."""
    return values or [pytest.param(None, id="shared-data-missing")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"MIADMARK_REQUIRE_ALL=1: this test would be skipped ({reason}): install what it needs"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:  # a module-level skip (importorskip, allow_module_level)
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"MIADMARK_REQUIRE_ALL=1: {collector.nodeid} would be skipped ({reason})"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def site_keys(tmp_path_factory):
    """hospital (signer), research (recipient), other (neither), each an Identity with its paths."""
    from miadmark.keys import load_identity, new_identity

    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("hospital", "research", "other"):
        key_path, cert_path = new_identity(name, folder)
        out[name] = load_identity(key_path, cert_path)
        out[f"{name}_paths"] = (key_path, cert_path)
    return out
