"""The guides in docs/ are followed top to bottom, as a person would: every ```sh block of a guide, in
order, as one bash script, in a fresh copy of the repository (the README's install: `.venv`, and
`../shared/data` beside it), with real processes (the gateway, the receiving node, Orthanc, dcmtk).
Only the well-known ports are replaced by free ones, in the script and in the shipped configurations."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from waiting import free_port

REPO = Path(__file__).resolve().parents[1]
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
PORTS = (11112, 11113, 9100, 9101, 8042, 8043, 4242)
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("echoscu") is None,
                                 reason="dcmtk not installed (Debian package dcmtk)")


def shell_blocks(guide: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", (REPO / guide).read_text(), flags=re.S | re.M)


def fresh_checkout(tmp: Path) -> Path:
    """The repository's files (tracked or new, not ignored) in tmp/repo, with .venv and ../shared beside."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    repo = tmp / "repo"
    for name in listed:
        if name and not name.startswith("docs/evaluation/") and (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")
    (tmp / "shared").symlink_to(REPO.parent / "shared")
    return repo


def follow(guide: str, tmp: Path, timeout: float) -> str:
    """Run the guide's shell blocks; return their output. Processes the guide leaves running are ended."""
    repo = fresh_checkout(tmp)
    ports = {p: free_port() for p in PORTS}

    def local(text: str) -> str:
        for port, free in ports.items():
            text = re.sub(rf"\b{port}\b", str(free), text)
        return text
    for cfg in [*repo.glob("orthanc*.json"), *repo.glob("miadmark*.yaml")]:
        cfg.write_text(local(cfg.read_text()))
    script = repo / "guide.sh"
    script.write_text("set -euo pipefail\nset -x\n" + local("\n".join(shell_blocks(guide))))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(["bash", str(script)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
        pytest.fail(f"{guide} did not finish in {timeout} s:\n{out[-6000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # what the guide started and left running
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"{guide} failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


def test_every_guide_that_gives_commands_is_followed_by_a_test():
    followed = {"docs/cli.md", "docs/gateway.md", "docs/orthanc.md"}
    elsewhere = {"docs/service.md": "tests/test_ops_packaging.py (install.sh, keys.sh, compose services)",
                 "docs/release.md": "tests/test_release.py (real Orthancs, real Ray)",
                 "docs/two-sites.md": "docs/orthanc.md's walk-through (same shipped files)",
                 "docs/verify.md": "tests/test_verify.py"}
    with_commands = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md") if shell_blocks(
        str(p.relative_to(REPO)))}
    assert with_commands <= followed | set(elsewhere), with_commands - followed - set(elsewhere)


def test_cli_guide_by_hand(tmp_path):
    out = follow("docs/cli.md", tmp_path, timeout=600)
    assert "3 protected, 0 failed" in out and "3 stripped, 0 failed" in out
    assert "3 same, 0 differ, 0 missing" in out


@needs_dcmtk
@pytest.mark.slow
def test_gateway_guide_top_to_bottom(tmp_path):
    out = follow("docs/gateway.md", tmp_path, timeout=600)
    assert "10 same, 0 differ, 0 missing" in out, out[-4000:]
    assert re.search(r'miadmark_instances_protected_total\{destination="research",profile="fast"\} 10', out), \
        out[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Orthanc") is None or not PYTHON_PLUGIN.exists(),
                    reason="Orthanc with its Python plugin not installed (bash .ci/install-orthanc.sh)")
def test_orthanc_guide_top_to_bottom(tmp_path):
    out = follow("docs/orthanc.md", tmp_path, timeout=600)
    assert "study ID: " in out and "3 same, 0 differ, 0 missing" in out, out[-4000:]


def test_readme_is_short_and_its_links_and_the_guides_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    assert ".venv/bin/pytest" in readme and "`.ci/run` does all of it" in readme
    broken = []
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http") and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
