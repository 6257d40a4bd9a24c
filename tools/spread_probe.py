"""Quick measurement to choose the spread levels' caps: the `cloak` engine at a strength level (and
option overrides) on held-out brain MRI, judged by the committed 128 px black-box models only (never a
gradient, never a tuning loop over them), with readability over the anatomy. Any dataset with black-box models
(brain MRI, chest X-ray, dermoscopy: scored by balanced accuracy as `evaluate` does).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python tools/spread_probe.py --n 48 [--profile fast] \\
        [--data ../shared/data/chest_xray_224] \\
        --config discreet --config standard --config 'strong' --config 'standard:{"alpha_cap": 0.15}' \\
        --json docs/evaluation/spread_probe.json

Images: the validation split `miadmark evaluate` uses (seeded md5-group hash; the surrogates never trained on
it), its first n of the same seeded permutation; lesion: Grad-CAM of the surrogates as `evaluate` makes it.
Readability over the anatomy (grey > 0.08, the lesion excluded): contrast transmission = least-squares slope
of protected on original; SSIM = mean of the SSIM map (window 11, sigma 1.5) there. The evaluation proper
(careful with the tool's own marks, removal, adaptive) is miadmark/evaluate.py's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import torch

from miadmark.engine import ImageContext, Profile, get_engine
from miadmark.engine.eot import jpeg_numpy
from miadmark.engine.ensemble import Ensemble, gradcam_lesion
from miadmark.evaluate import BALANCED, accuracy, inpaint
from miadmark.evaluation.pictures import save_png, triptych
from miadmark.evaluation.readability import readability
from miadmark.surrogates import BLACKBOX_DIR, DATASET_MODALITY, surrogates_for_modality
from miadmark.surrogates.data import load_dataset
from miadmark.surrogates.train import load

def _slug(opts: str) -> str:
    return "".join(ch for ch in opts if ch.isalnum() or ch in "._") or "default"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/brain_mri")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--config", action="append", required=True,
                   help='STRENGTH or STRENGTH:{"option": value} (typed options of cloak)')
    p.add_argument("--iterations", type=int, default=30, help="cloak's iterations")
    p.add_argument("--profile", default="cloak", choices=["cloak", "fast"])
    p.add_argument("--json")
    p.add_argument("--pictures", help="folder: original | protected | difference x4 of the first 3 images per config")
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(a.data, seed=0)
    x_u8, y = ds.split(val=True)
    perm = torch.randperm(len(x_u8), generator=torch.Generator().manual_seed(1234))[:a.n].sort().values
    x, y = x_u8[perm].float() / 255, y[perm]
    # the images arrive as their DICOM modality would (as in `evaluate`): the engine picks the surrogates itself
    modality, photometric = DATASET_MODALITY.get(ds.name, "MR"), "RGB" if x.shape[1] == 3 else "MONOCHROME2"
    ctx = [ImageContext(modality=modality, photometric=photometric, sop_instance_uid=f"probe.{int(i)}") for i in perm]
    balanced = ds.name in BALANCED
    judges = {q.stem: m for q in sorted(BLACKBOX_DIR.glob("*.pt")) if (m := load(q)).meta.get("dataset") == ds.name}
    plain = [k for k, m in judges.items() if not m.meta.get("logo_augment")]
    careful = [k for k, m in judges.items() if m.meta.get("logo_augment")]
    ens = Ensemble.get(list(surrogates_for_modality(modality, photometric)), torch.device("cpu"))
    lesion = gradcam_lesion(ens, x, 170.0)

    def score(imgs):
        acc = {k: accuracy(m, imgs, y, balanced=balanced) for k, m in judges.items()}
        mean = [round(sum(acc[k] for k in group) / len(group), 4) for group in (plain, careful)]
        return mean[0], mean[1], acc

    rows = [{"config": "clean", "plain": score(x)[0], "careful": score(x)[1], "transmission": 1.0, "ssim": 1.0}]
    for spec in a.config:
        strength, _, opts = spec.partition(":")
        options = {"iterations": a.iterations} if a.profile == "cloak" else {}
        options.update(json.loads(opts) if opts else {})
        eng = get_engine(Profile(name=a.profile, strength=strength, options=options), "cpu")
        marker = get_engine(Profile(name="cloak", strength=strength, options={k: v for k, v in options.items()
                                                                               if k != "generator"}), "cpu")
        t0 = time.perf_counter()
        outs, params = [], []
        for i in range(0, len(x), 16):
            r = eng.watermark(x[i:i + 16], lesion[i:i + 16], ctx[i:i + 16])
            outs.append(r.images)
            params += r.params
        out = torch.cat(outs)
        secs = (time.perf_counter() - t0) / len(x)
        if params[0]["design"] == "spread":
            mark = torch.cat([marker.marks(x[i:i + 16], lesion[i:i + 16], ctx[i:i + 16]).support
                              for i in range(0, len(x), 16)])
        else:
            mark = torch.zeros_like(lesion)
            for i, (y0, x0, y1, x1) in enumerate(pp["box"] for pp in params):
                mark[i, y0:y1, x0:x1] = True
        seen = readability(x, out, lesion)  # the same measure as `miadmark evaluate`
        tr, ss = seen["contrast_transmission"], seen["ssim_anatomy"]
        pl, ca, per = score(out)
        inp = score(inpaint(out, mark, cv2.INPAINT_TELEA))
        jp = score(jpeg_numpy(out, 75))
        row = {"config": f"{a.profile} {spec}", "design": params[0]["design"], "plain": pl, "careful": ca,
               "mark_inpainted_plain": inp[0],
               "mark_inpainted_careful": inp[1], "jpeg_q75_plain": jp[0], "transmission": round(tr, 4),
               "ssim": round(ss, 4), "coverage": round(float(mark.float().mean()), 4),
               "lesion_px_changed": int((out != x)[:, 0][lesion].sum()), "s_per_image": round(secs, 3),
               "per_model": {k: round(v, 4) for k, v in per.items()}}
        rows.append(row)
        if a.pictures:
            Path(a.pictures).mkdir(parents=True, exist_ok=True)
            save_png(torch.cat([triptych(x[i], out[i], lesion[i]) for i in range(min(3, len(x)))], 1),
                     Path(a.pictures) / f"{a.profile}_{strength}_{_slug(opts)}.png")
        print(json.dumps({k: v for k, v in row.items() if k != "per_model"}), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"n": a.n, "data": a.data, "metric": "balanced accuracy" if balanced else "accuracy",
                       "judges": {"plain": plain, "careful": careful}, "rows": rows,
                       "iterations": a.iterations}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
