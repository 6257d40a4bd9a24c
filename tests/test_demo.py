"""`miadmark demo` (issue 24 item 8): each run starts from a clean output folder and passes only on what
it delivered itself, so a second run in the same folder passes on its own slices (not on files the
first one left), and a folder the demo did not make is never emptied."""

from __future__ import annotations

import pytest

from miadmark.cli import main

pytestmark = pytest.mark.slow  # a gateway and a receiving node per run


def test_demo_run_twice_counts_only_its_own_delivery(tmp_path, capsys, shared_data):
    out = tmp_path / "demo-out"
    args = ["demo", "--out", str(out), "--slices", "2", "--profile", "plain", "--timeout", "120"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "exact     2/2" in first and "demo passed" in first
    (out / "received" / "left-over.dcm").write_bytes(b"an earlier run's file")
    key = (out / "keys" / "research.key.pem").read_bytes()
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "received  2 clean originals" in second and "exact     2/2" in second and "demo passed" in second
    assert not (out / "received" / "left-over.dcm").exists()
    assert (out / "keys" / "research.key.pem").read_bytes() == key  # the keys are kept across runs


def test_demo_never_empties_a_folder_it_did_not_make(tmp_path, capsys, shared_data):
    mine = tmp_path / "mine"
    (mine / "received").mkdir(parents=True)
    (mine / "received" / "keep.dcm").write_bytes(b"someone's file")
    assert main(["demo", "--out", str(mine), "--slices", "1", "--profile", "plain"]) == 2
    assert "not a demo output folder" in capsys.readouterr().err
    assert (mine / "received" / "keep.dcm").exists()
