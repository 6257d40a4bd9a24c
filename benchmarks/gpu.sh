#!/usr/bin/env bash
# The GPU run in one command, on a fresh machine with an NVIDIA card:
#
#   bash benchmarks/gpu.sh [--out benchmarks/gpu_<card>.json] [--wheels DIR] [--no-install] [--device cuda|cpu] [--tiny]
#
# 1. a virtual environment .venv-gpu beside the repository, with torch from PyPI (its Linux wheels carry CUDA)
#    and the project (pip install -e .); --wheels DIR installs offline from a wheelhouse instead; --no-install
#    uses the python on PATH (or $PYTHON) as it is;
# 2. benchmarks/engine.py: `auto` (the default profile: cloak on a GPU), `fast` and `plain` at batch 1, 16 and 64
#    on 224 px images and 512 px CT slices (the engine alone), then end to end on the real CT series
#    (../shared/data/dicom/ct_chest_lidc0314: decode -> protect -> record -> encode) at batch 1, 16 and 64;
# 3. one JSON: the card's name, driver, torch and CUDA versions, and both benchmarks' results.
# --device cpu --tiny runs the same path on a CPU at tiny sizes (tests/test_benchmarks.py does, with --no-install).
set -euo pipefail

ARGS="$*"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda
TINY=0
INSTALL=1
WHEELS=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$INSTALL" = 1 ]; then
  VENV="$REPO/.venv-gpu"
  python3 -m venv "$VENV"
  PY="$VENV/bin/python"
  if [ -n "$WHEELS" ]; then
    PIP=("$PY" -m pip install --no-index --find-links "$WHEELS")
  else
    PIP=("$PY" -m pip install)
    "$PY" -m pip install --upgrade pip >/dev/null
  fi
  "${PIP[@]}" torch  # PyPI's Linux x86_64 torch wheels are CUDA builds
  "${PIP[@]}" -e "$REPO"
else
  PY="${PYTHON:-python3}"
  [ -x "$REPO/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$REPO/.venv/bin/python"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA device')"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ "$TINY" = 1 ]; then
  SIZE=(--tiny)
else
  SIZE=(--batches 1 16 64 --e2e-slices 96 --e2e-batches 1 16 64 --min-seconds 3)
fi
"$PY" "$REPO/benchmarks/engine.py" --device "$DEVICE" --engines auto fast plain "${SIZE[@]}" \
  --json "$WORK/engine.json" | tee "$WORK/engine.log"

"$PY" - "$WORK/engine.json" "$DEVICE" "$OUT" "$REPO" "$ARGS" <<'EOF'
import json, platform, subprocess, sys
from pathlib import Path

import torch

engine_json, device, out, repo = sys.argv[1:5]
result = json.loads(Path(engine_json).read_text())
if device == "cuda":
    card = torch.cuda.get_device_name(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        driver = None
else:
    card, driver = f"cpu: {result['machine']['cpu']} ({result['machine']['cores']} cores)", None
doc = {"card": card, "driver": driver, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
       "python": platform.python_version(), "machine": result["machine"], "command": "bash benchmarks/gpu.sh "
       + sys.argv[5], "engine": result["engine_only"], "end_to_end": result["end_to_end_ct_512px"]}
name = "".join(ch if ch.isalnum() else "_" for ch in card.lower()).strip("_")[:40]
path = Path(out) if out else Path(repo) / "benchmarks" / f"gpu_{name}.json"
path.write_text(json.dumps(doc, indent=2) + "\n")
print(f"gpu.sh: wrote {path}")
EOF
