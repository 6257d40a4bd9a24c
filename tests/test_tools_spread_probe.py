"""tools/spread_probe.py runs end to end at a tiny size (2 held-out brain images, 1 iteration) and reports
readability with the same measure as `miadmark evaluate`."""

import json
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_spread_probe_tiny_run(tmp_path, shared_data):
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(REPO / "tools" / "spread_probe.py"), "--n", "2", "--iterations", "1",
                    "--config", "standard", "--json", str(out), "--pictures", str(tmp_path / "pics")],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    (row,) = [r for r in json.loads(out.read_text())["rows"] if r.get("design")]  # the clean row has none
    assert row["design"] == "spread" and row["lesion_px_changed"] == 0
    assert 0 < row["transmission"] < 1 and 0 < row["ssim"] < 1  # the mark changed what a reader sees, not all
    assert (tmp_path / "pics" / "cloak_standard_default.png").stat().st_size > 0
