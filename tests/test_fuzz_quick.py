"""Issue 14, finding 6: a few hundred seeded mutants of the real files (tools/fuzz.py), each in a worker
child under a memory cap and a timeout; every one must be ok or a named refusal (no uncaught exception,
no crash, no timeout). The 10,000-mutant run and its numbers are in docs/fuzz/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_fuzz_has_only_named_refusals(tmp_path):
    summary = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "fuzz.py"), "--mutants", "200", "--seed", "20261130",
                           "--timeout", "60", "--json", str(summary), "--quiet"],
                          capture_output=True, text=True, timeout=900)
    result = json.loads(summary.read_text())
    assert result["mutants"] == 200
    bad = {k: v for k, v in result["outcomes"].items() if not k.startswith(("ok", "refused:"))}
    assert bad == {}, json.dumps(result["examples"], indent=1)[:4000]
    assert result["unexpected_caught"] == 0, json.dumps(result["examples"], indent=1)[:4000]
    assert proc.returncode == 0
    # both verbs ran, and most mutants were refused for a reason (the mutations do bite)
    assert any(k.startswith("refused:RecordCorrupt") for k in result["outcomes"])
    refused = sum(v for k, v in result["outcomes"].items() if k.startswith("refused:"))
    assert refused > result["mutants"] // 2
    assert result["peak_rss_mb"]["rss_mb"] < result["parent_rss_mb"] + 2048


def test_inline_replay_runs_the_target_and_names_each_outcome(tmp_path):
    """The documented replay (`--only N --inline`) runs the same public target as a worker child: each mutant
    gets its outcome in the summary and its traceback on stderr, never a TypeError from the tool itself."""
    summary = tmp_path / "replay.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "fuzz.py"), "--only", "3", "--only", "7", "--inline",
                           "--json", str(summary)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["mutants"] == 2
    assert all(k.startswith(("ok", "refused:")) for k in result["outcomes"]), result
    assert "TypeError" not in proc.stderr, proc.stderr[-3000:]
    assert "fuzz.py" in proc.stderr and "Traceback" in proc.stderr  # a refusal is shown with where it came from
