"""Shared fixtures: the real data in ../shared/data (read in place) and session-wide site keys."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DICOM_DATA = SHARED_DATA / "dicom"

# Files that must be refused: their pixel data does not decode (the *_fixed twins do).
UNDECODABLE = {"JPEG-lossy.dcm", "RG2_JPLY.dcm", "966.dcm"}


def all_dicom_files() -> list[Path]:
    return sorted(p for p in DICOM_DATA.rglob("*.dcm"))


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
