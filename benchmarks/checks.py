"""What the watermark's mask and checks cost beside the engine: the perceptual mask at full resolution and at the
watermark's resolution S, and `violations` over the batch, on the real 512 px CT slices (model domain), against
the whole `fast` engine on the same batch, in the same run.

    .venv/bin/python benchmarks/checks.py [--batch 16] [--repeat 5] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine import ct_slices  # noqa: E402
from miadmark.engine import constraints as C  # noqa: E402
from miadmark.engine import get_engine  # noqa: E402
from miadmark.machine import describe  # noqa: E402


def ms_per_image(fn, n: int, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - t0) / repeat / n * 1000, 2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="batch 2, one repeat (tests)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch, args.repeat = 2, 1
    x = ct_slices(args.batch)
    n, _, h, w = x.shape
    engine = get_engine("fast", "cpu")
    size = engine.ensemble.size
    budget = C.Budget()
    bh, bw = C.box_size(h, w, budget.max_area_fraction)
    boxes = [[40, 60, 40 + bh, 60 + bw]] * n
    frozen = C.box_mask(n, h, w, boxes)
    lesion = torch.zeros(n, h, w, dtype=torch.bool)
    with torch.no_grad():
        out = engine.watermark(x, None, []).images
        row = {"machine": describe(), "batch": n, "size": f"{h}x{w}", "S": size,
               "mask_full_ms": ms_per_image(lambda: C.perceptual_mask(x, frozen, budget), n, args.repeat),
               "mask_at_S_ms": ms_per_image(lambda: C.perceptual_mask(x, frozen, budget, size=size), n, args.repeat),
               "violations_ms": ms_per_image(lambda: C.violations(x, out, lesion, boxes, budget), n, args.repeat),
               "fast_engine_ms": ms_per_image(lambda: engine.watermark(x, None, []), n, args.repeat)}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
