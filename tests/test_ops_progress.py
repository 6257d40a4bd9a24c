"""Progress bars on `train` and `evaluate` (tqdm on stderr, on request or on a terminal); real runs on the
shared data, kept small (one epoch of PneumoniaMNIST 28x28; 4 brain MRI images)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "miadmark.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_train_and_evaluate_show_progress(tmp_path):
    res = run(["train", "--data", str(DATA / "chest_xray28" / "pneumoniamnist.npz"), "--arch", "resnet10",
               "--epochs", "1", "--size", "28", "--threads", "1", "--out", str(tmp_path / "m.pt"), "--progress"],
              tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resnet10 epoch 1/1: 100%" in res.stderr.replace("\r", "\n")
    res = run(["evaluate", "--data", str(DATA / "brain_mri"), "--profile", "plain", "--limit", "4", "--batch", "4",
               "--examples", "1", "--out", str(tmp_path / "report"), "--progress"], tmp_path)
    assert res.returncode == 0, res.stderr
    bars = res.stderr.replace("\r", "\n")
    assert "protect (plain): 100%" in bars and "score (condition x transform): 100%" in bars
    assert (tmp_path / "report" / "report.json").exists()
