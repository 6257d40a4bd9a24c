"""Choose engine settings (`cloak`, the default, or `transfer`) without looking at the black-box models:
attack N validation images and report the accuracy of the surrogates (white-box) and of the tuning proxies in
miadmark/surrogates/weights/proxy/ (other architectures, never in the engine's ensemble, never among
the evaluation's black-box models).

    .venv/bin/python tools/proxy_tuning.py --n 128 --opts '{"cloak_step": "l2"}'
    .venv/bin/python tools/proxy_tuning.py --profile transfer --n 128 --opts '{"prior": false}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from miadmark.engine import Profile, get_engine
from miadmark.engine.ensemble import Ensemble, gradcam_lesion
from miadmark.evaluate import accuracy
from miadmark.surrogates import DEFAULT_SURROGATES, WEIGHTS_DIR
from miadmark.surrogates.data import load_dataset
from miadmark.surrogates.train import load


def per_class(model, x: torch.Tensor, labels: torch.Tensor, n_cls: int) -> list[float]:
    s = model.meta["in_size"]
    with torch.no_grad():
        pred = model(F.interpolate(x.mean(1, keepdim=True), size=(s, s), mode="bilinear", antialias=True,
                                   align_corners=False)).argmax(1)
    return [round(float((pred[labels == c] == c).float().mean()), 3) for c in range(n_cls)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/brain_mri"))
    ap.add_argument("--n", type=int, default=128, help="validation images (the evaluation's order, first N)")
    ap.add_argument("--opts", default="{}", help="engine options as JSON")
    ap.add_argument("--profile", default="cloak")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--area", type=float, default=None, help="logo box as a fraction of the image (default 1/9)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    opts = json.loads(a.opts)
    ds = load_dataset(a.data)
    x_u8, y = ds.split(val=True)
    perm = torch.randperm(len(x_u8), generator=torch.Generator().manual_seed(1234))[:a.n].sort().values
    imgs, labels = x_u8[perm].float() / 255, y[perm]
    box = {} if a.area is None else {"max_area_fraction": a.area}
    eng = get_engine(Profile(name=a.profile, options=opts, **box), "cpu")
    names = opts.get("surrogates") or DEFAULT_SURROGATES
    ens = Ensemble.get(names, torch.device("cpu"))
    models = {n: load(WEIGHTS_DIR / f"{n}.pt") for n in names}
    models |= {f"proxy:{p.stem}": load(p) for p in sorted((WEIGHTS_DIR / "proxy").glob("*.pt"))}
    t0, outs = time.time(), []
    for i in range(0, a.n, 32):
        xb = imgs[i:i + 32]
        outs.append(eng.watermark(xb, gradcam_lesion(ens, xb, eng.cam_threshold_default), []).images)
    prot = torch.cat(outs)
    print(json.dumps({
        "profile": a.profile, "opts": opts, "area": eng.profile.max_area_fraction, "n": a.n,
        "seconds_per_image": round((time.time() - t0) / a.n, 3),
        "accuracy_clean_protected": {k: [round(accuracy(m, imgs, labels), 3), round(accuracy(m, prot, labels), 3)]
                                     for k, m in models.items()},
        "per_class_protected": {k: per_class(m, prot, labels, len(ds.classes)) for k, m in models.items()},
    }))


if __name__ == "__main__":
    main()
