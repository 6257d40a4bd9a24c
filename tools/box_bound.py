"""How far can *any* logo content in the box go? The white-box accuracy of the surrogates when every
logo limit is lifted (alpha 0-1, any texture, no contrast rule), 100 iterations, no transforms, at each
of the first K lesion-free placements, and per model the best placement in hindsight (an optimistic
bound for the attacker). The lesion mask is the evaluator's (Grad-CAM >= 170).

    .venv/bin/python tools/box_bound.py --n 64 --placements 4 [--area 0.111]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from miadmark.engine import Profile, get_engine
from miadmark.engine.ensemble import Ensemble, gradcam_lesion
from miadmark.surrogates.data import load_dataset

UNLIMITED = {"alpha_min": 0, "stroke_alpha_max": 1, "plate_alpha_max": 1, "stroke_min": 0, "contrast": -1,
             "iterations": 100, "transforms": False, "prior": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/brain_mri"))
    ap.add_argument("--n", type=int, default=64, help="validation images (the evaluation's order, first N)")
    ap.add_argument("--placements", type=int, default=4)
    ap.add_argument("--area", type=float, default=1 / 9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x_u8, y = load_dataset(a.data).split(val=True)
    perm = torch.randperm(len(x_u8), generator=torch.Generator().manual_seed(1234))[:a.n].sort().values
    imgs, labels = x_u8[perm].float() / 255, y[perm]
    ens = Ensemble.get(None, torch.device("cpu"))
    lesion = gradcam_lesion(ens, imgs, 170.0)
    correct = []
    for k in range(a.placements):
        eng = get_engine(Profile(name="transfer", options=UNLIMITED, max_area_fraction=a.area), "cpu")
        every = eng.layouts  # keep only the k-th candidate placement of each image

        def kth(images, les, grid=7, _every=every, _k=k):
            return [c[min(_k, len(c) - 1):min(_k, len(c) - 1) + 1] for c in _every(images, les, grid)]

        eng.layouts = kth
        prot = torch.cat([eng.watermark(imgs[i:i + 32], lesion[i:i + 32], []).images for i in range(0, a.n, 32)])
        with torch.no_grad():
            xs = ens.prep(prot)
            correct.append(torch.stack([m(xs).argmax(1) == labels for m in ens.models]))
        print(json.dumps({"placement": k + 1, "models": ens.names,
                          "accuracy_here": [round(float(v), 3) for v in correct[-1].float().mean(1)],
                          "accuracy_best_placement_so_far": [round(float(v), 3) for v in
                                                             torch.stack(correct).all(0).float().mean(1)]}),
              flush=True)


if __name__ == "__main__":
    main()
