"""CI cannot pass by skipping: under MIADMARK_REQUIRE_ALL=1 (.ci/run) a test that would be skipped, at run
time, by a skipif mark or at collection (importorskip), fails naming what is missing; without it a
partial machine still skips. Checked on a throwaway test folder run with this suite's conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import shared_params

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_needs_a_server():
    pytest.skip("no Orthanc binary here")

@pytest.mark.skipif(True, reason="no chromium")
def test_needs_a_browser():
    pass

def test_runs():
    assert True
'''


def _run(folder: Path, require_all: bool, target: str = ".") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MIADMARK_REQUIRE_ALL"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    if require_all:
        env["MIADMARK_REQUIRE_ALL"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), "-c", os.devnull, target],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)


def test_a_skip_fails_under_require_all_and_skips_without(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_needs_module.py").write_text("import pytest\npytest.importorskip('no_such_module_here')\n"
                                                   "def test_x():\n    pass\n")
    relaxed = _run(tmp_path, require_all=False)
    assert relaxed.returncode == 0 and "1 passed, 3 skipped" in relaxed.stdout, relaxed.stdout
    strict = _run(tmp_path, require_all=True, target="test_sample.py")
    assert strict.returncode == 1 and "1 failed, 1 passed, 1 error" in strict.stdout, strict.stdout  # skipif: at setup
    assert "no Orthanc binary here" in strict.stdout and "no chromium" in strict.stdout
    collecting = _run(tmp_path, require_all=True)  # a module skipped whole: the run stops with an error
    assert collecting.returncode == 2 and "no_such_module_here" in collecting.stdout, collecting.stdout


def test_shared_data_parameters_are_never_empty():
    """Without ../shared/data an import-time parametrization gets one parameter, for the fixture to fail."""
    assert shared_params([1, 2]) == [1, 2]
    [missing] = shared_params([])
    assert missing.values == (None,) and missing.id == "shared-data-missing"
