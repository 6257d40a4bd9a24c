"""`miadmark evaluate`: measure a watermark profile the way a careful third party would attack it.

Accuracy of white-box models (the engine's surrogates) and black-box models (other architectures and
seeds, some trained with random-logo augmentation, never seen by the engine) on: clean images, a plain
logo of the same footprint (control: occlusion only), the protected images, and the protected images
with the watermark inpainted away (OpenCV TELEA on the exact footprint); each as is, after JPEG q75,
and after resizing to half and back. Image quality outside the logo box (PSNR, SSIM), fraction of
pixels changed, lesion pixels changed (must be 0), seconds per image. Writes report.json, report.html
and a few PNGs (before / after / difference).
"""

from __future__ import annotations

import html
import json
import logging
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .engine.constraints import DEFAULT_STRENGTH
from .engine import DEFAULT_PROFILE, ImageContext, Profile, get_engine, resolve_profile
from .engine.eot import jpeg_numpy, resize_back
from .engine.logo import logo_tensors
from .surrogates import BLACKBOX_DIR, DATASET_MODALITY, WEIGHTS_DIR, surrogates_for_modality
from .surrogates.data import load_dataset
from .surrogates.train import load
from .evaluation import Arena, OwnImages, make_third_parties
from .evaluation.pictures import write_triptychs
from .evaluation.readability import readability
from .evaluation.targets import level_targets
from .machine import cpu_model
from .evaluation.inpainted import inpaint
from .evaluation.readability import ssim_map

log = logging.getLogger(__name__)
BALANCED = {"skin_ham10000"}  # datasets scored by balanced accuracy (most of the skin data is one class)
UPSTREAM = {"chest_xray_224", "skin_ham10000"}  # validation split made upstream by patient / lesion


def plain_control(images: torch.Tensor, boxes: list[list[int]], alpha: float, logo: str | None) -> torch.Tensor:
    """The plain default logo (white, transparency alpha) in exactly the protected image's box."""
    out = images.clone()
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        m, t, _ = logo_tensors(logo, y1 - y0, x1 - x0, images.shape[1], images.device)
        reg = out[i, :, y0:y1, x0:x1]
        out[i, :, y0:y1, x0:x1] = (1 - alpha * m) * reg + alpha * m * t
    return out


def contrast_transmission(images: torch.Tensor, out: torch.Tensor, boxes: list[list[int]], lesion: torch.Tensor,
                          level: float = 0.04) -> float:
    """Readability inside the box: the least-squares slope of the output on the original over the
    anatomy in the box (grey above `level`, off the lesion), mean over images. 1 = untouched, 0.5 = a 50 %
    blend, about 0 = an opaque plate."""
    slopes = []
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        a = images[i, :, y0:y1, x0:x1].mean(0).flatten()
        b = out[i, :, y0:y1, x0:x1].mean(0).flatten()
        keep = (a > level) & ~lesion[i, y0:y1, x0:x1].flatten()
        a, b = a[keep], b[keep]
        var = float(((a - a.mean()) ** 2).sum()) if len(a) > 16 else 0.0
        if var > 1e-6:
            slopes.append(float(((a - a.mean()) * (b - b.mean())).sum()) / var)
    return round(float(np.mean(slopes)), 4) if slopes else float("nan")


def predict(model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    s = model.meta["in_size"]
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            if x.shape[1] != model.meta["in_ch"]:
                x = x.mean(1, keepdim=True) if model.meta["in_ch"] == 1 else x.expand(-1, model.meta["in_ch"], -1, -1)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            preds.append(model(x).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 128, balanced: bool = False) -> float:
    """Accuracy, or balanced accuracy (mean recall over the classes present) when `balanced`."""
    from .surrogates.train import balanced_accuracy

    pred = predict(model, images, batch)
    if balanced:
        return balanced_accuracy(pred, labels)
    return float((pred == labels).float().mean()) if len(labels) else 0.0


# The targets on our own black-box models: (measure, bound, "<=" or ">="). Accuracy bounds for
# the skin data are factors of the clean balanced accuracy of the same models.
TARGETS = {
    "brain_mri": {"black_box": 0.15, "careful_black_box": 0.30, "box_inpainted": 0.45, "jpeg_q75": 0.20},
    "chest_xray_224": {"black_box": 0.25, "careful_black_box": 0.35, "box_inpainted": 0.50, "jpeg_q75": 0.30},
    "skin_ham10000": {"black_box": "0.5x", "careful_black_box": "0.6x", "box_inpainted": "0.7x",
                      "jpeg_q75": "0.6x"},
}


def targets_table(ds_name: str, summary: dict, quality: dict) -> list[dict]:
    """Each target of the issue with its measured value and whether it is met."""
    rows = []
    t = TARGETS.get(ds_name, {})

    def mean(role, cond, tf="none"):
        return summary.get(role, {}).get(cond, {}).get(tf, {}).get("mean")

    measured = {
        "black_box": ("black_box", mean("black_box", "protected"), mean("black_box", "clean")),
        "careful_black_box": ("careful_black_box", mean("careful_black_box", "protected"),
                              mean("careful_black_box", "clean")),
        "box_inpainted": ("all black-box, worse of TELEA / NS",
                          max([v for v in (mean("all_black_box", "protected_inpainted_telea"),
                                           mean("all_black_box", "protected_inpainted_ns")) if v is not None],
                              default=None), mean("all_black_box", "clean")),
        "jpeg_q75": ("black_box", mean("black_box", "protected", "jpeg_q75"), mean("black_box", "clean", "jpeg_q75")),
    }
    for key, bound in t.items():
        models, value, clean = measured[key]
        if value is None:
            continue
        if isinstance(bound, str):
            limit = float(bound[:-1]) * clean
            label = f"<= {bound} clean ({limit:.3f})"
        else:
            limit, label = bound, f"<= {bound}"
        rows.append({"target": key, "models": models, "bound": label, "value": value, "met": value <= limit + 1e-9})
    for key, value, bound, better in (
            ("readability_in_box", quality["contrast_transmission_in_box"], 0.5, ">="),
            ("ssim_outside_box", quality["ssim_outside_logo"], 0.98, ">="),
            ("psnr_outside_box_db", _psnr_value(quality["psnr_outside_logo_db"]), 40.0, ">="),
            ("lesion_pixels_changed", quality["lesion_pixels_changed"], 0, "==")):
        met = value == "unchanged" or (isinstance(value, (int, float)) and not math.isnan(value)
                                       and (value >= bound if better == ">=" else value == bound))
        rows.append({"target": key, "models": "", "bound": f"{better} {bound}", "value": value, "met": bool(met)})
    return rows


def _psnr_value(psnr: dict) -> float | str | None:
    """Mean PSNR outside the box over the images changed there; "unchanged" when no image is (a logo
    alone: PSNR infinite, the bound is kept)."""
    if psnr["mean_finite"] is None and psnr["images_identical_outside_logo"]:
        return "unchanged"
    return psnr["mean_finite"]


def _png(t: torch.Tensor, path: Path) -> None:
    from PIL import Image

    a = (t.clamp(0, 1) * 255).round().byte().cpu().numpy()
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    Image.fromarray(a).save(path, optimize=True)


def run_evaluation(data: str, profile: Profile, out_dir: str | Path, *, models: list[str] | None = None,
                   reference_models: list[str] | None = None, limit: int = 200, batch: int = 32,
                   device: str = "cpu", split_seed: int = 0, n_examples: int = 4, progress: bool = True,
                   command: str | None = None, third_parties: list[str] | None = None,
                   third_party_options: dict | None = None, own: OwnImages | None = None) -> dict:
    parties = make_third_parties(third_parties, third_party_options)  # bad names or options fail before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data, seed=split_seed)
    x_u8, y = ds.split(val=True)
    perm = torch.randperm(len(x_u8), generator=torch.Generator().manual_seed(1234))[:limit]
    perm = perm.sort().values
    eval_index = torch.nonzero(ds.is_val).flatten()[perm]
    images, labels = x_u8[perm].float() / 255, y[perm]
    n, c, h, w = images.shape
    balanced = ds.name in BALANCED
    engine = get_engine(profile, device)
    # the images arrive as their DICOM modality would: the engine picks the surrogates itself
    ctx = ImageContext(modality=DATASET_MODALITY.get(ds.name, ""), photometric="RGB" if c == 3 else "MONOCHROME2")
    sur_names = list(profile.options.get("surrogates") or surrogates_for_modality(ctx.modality, ctx.photometric))
    white = {nm: load(WEIGHTS_DIR / f"{nm}.pt") for nm in sur_names if (WEIGHTS_DIR / f"{nm}.pt").exists()}
    if models:
        black = {Path(p).stem: load(p) for p in models}
    else:  # the black-box models of this dataset (never loaded by the engine, never used for tuning)
        black = {p.stem: m for p in sorted(BLACKBOX_DIR.glob("*.pt")) if (m := load(p)).meta.get("dataset") == ds.name}
    # other black-box models scored on the same protected images but kept out of the targets (e.g. the
    # models a new set replaces: does the effect carry over from one set to the other?)
    reference = {Path(p).stem: load(p) for p in reference_models or []}

    from .engine.ensemble import Ensemble, gradcam_lesion

    ens = Ensemble.get(sur_names, torch.device("cpu"))
    cam_thr = float(profile.options.get("cam_threshold", getattr(engine, "cam_threshold_default", 140)))
    prot, params, secs, lesions = [], [], 0.0, []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    it = range(0, n, batch)
    if progress and tqdm is not None:
        it = tqdm(it, desc=f"protect ({profile.name})", file=sys.stderr)
    for i in it:
        xb = images[i:i + batch]
        # the lesion mask is made here (Grad-CAM, as the engine would) so that it can be checked
        les = gradcam_lesion(ens, xb, cam_thr)
        t0 = time.perf_counter()
        res = engine.watermark(xb.to(engine.device), les.to(engine.device), [ctx] * len(xb))
        secs += time.perf_counter() - t0
        prot.append(res.images.cpu())
        params += res.params
        lesions.append(les)
    protected = torch.cat(prot)
    lesion = torch.cat(lesions)
    boxes = [p["box"] for p in params]
    box_mask = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        box_mask[i, y0:y1, x0:x1] = True
    changed = (protected != images).any(1)
    alpha = float(params[0].get("alpha_cap", profile.alpha_max)) if params else float(profile.alpha_max)
    plain = plain_control(images, boxes, alpha, profile.logo)
    # a third party sees the logo's box and paints it over; the cloak beyond it stays
    conditions = {
        "clean": images,
        "plain_logo_same_box": plain,
        "protected": protected,
        "protected_inpainted_telea": inpaint(protected, box_mask, cv2.INPAINT_TELEA),
        "protected_inpainted_ns": inpaint(protected, box_mask, cv2.INPAINT_NS),
    }
    transforms = {
        "none": lambda t: t,
        "jpeg_q75": lambda t: jpeg_numpy(t, 75),
        "resize_half_and_back": lambda t: resize_back(t, 0.5),
    }
    acc: dict = {}
    scored = tqdm(total=len(conditions) * len(transforms), desc="score (condition x transform)", file=sys.stderr,
                  disable=not (progress and tqdm is not None)) if tqdm is not None else None
    for cname, cx in conditions.items():
        for tname, tf in transforms.items():
            tx = tf(cx)
            if scored is not None:
                scored.update()
            for role, group in (("white_box", white), ("black_box", black), ("reference", reference)):
                for mname, model in group.items():
                    acc.setdefault(role, {}).setdefault(mname, {}).setdefault(cname, {})[tname] = \
                        round(accuracy(model, tx, labels, balanced=balanced), 4)
    careful = [m for m in black if black[m].meta.get("logo_augment")]
    groups = {"white_box": list(white), "black_box": [m for m in black if m not in careful],
              "careful_black_box": careful, "all_black_box": list(black),
              "reference_black_box": [m for m in reference if not reference[m].meta.get("logo_augment")],
              "reference_careful_black_box": [m for m in reference if reference[m].meta.get("logo_augment")]}
    summary: dict = {}
    for gname, members in groups.items():
        role = "white_box" if gname == "white_box" else "reference" if gname.startswith("reference") else "black_box"
        if not members:
            continue
        for cname in conditions:
            for tname in transforms:
                vals = [acc[role][m][cname][tname] for m in members]
                summary.setdefault(gname, {}).setdefault(cname, {})[tname] = {
                    "mean": round(float(np.mean(vals)), 4), "max": round(float(np.max(vals)), 4)}
    summary["models"] = groups
    g_img, g_prot = images.mean(1, keepdim=True), protected.mean(1, keepdim=True)
    outside = ~box_mask
    mse = (((protected - images) ** 2).mean(1) * outside).flatten(1).sum(1) / outside.flatten(1).sum(1)
    psnr = [None if float(v) == 0 else round(10 * math.log10(1 / float(v)), 2) for v in mse]
    smap = ssim_map(g_img, g_prot)[:, 0]
    ssim = ((smap * outside).flatten(1).sum(1) / outside.flatten(1).sum(1))
    quality = {
        "psnr_outside_logo_db": {"mean_finite": (round(float(np.mean([p for p in psnr if p is not None])), 2)
                                                 if any(p is not None for p in psnr) else None),
                                 "min": min([p for p in psnr if p is not None], default=None),
                                 "images_identical_outside_logo": sum(p is None for p in psnr)},
        "ssim_outside_logo": round(float(ssim.mean()), 5),
        "ssim_outside_logo_min": round(float(ssim.min()), 5),
        "contrast_transmission_in_box": contrast_transmission(images, protected, boxes, lesion),
        "contrast_transmission_plain_logo": contrast_transmission(images, plain, boxes, lesion),
        "fraction_pixels_changed": round(float(changed.float().mean()), 5),
        "fraction_pixels_changed_outside_box": round(float((changed & outside).float().mean()), 5),
        "box_area_fraction_max": round(float(box_mask.flatten(1).float().mean(1).max()), 5),
        "lesion_pixels_changed": int((changed & lesion).sum()),
        "lesion_fraction_of_image_mean": round(float(lesion.float().mean()), 4),
        "seconds_per_image": round(secs / n, 4),
    }
    ex_idx = torch.linspace(0, n - 1, n_examples).round().long().tolist()
    examples = []
    for k, i in enumerate(ex_idx):
        names = {}
        for tag, t in (("before", images[i]), ("plain", plain[i]), ("after", protected[i]),
                       ("inpainted", conditions["protected_inpainted_telea"][i])):
            p = out_dir / f"ex{k}_{tag}.png"
            _png(t, p)
            names[tag] = p.name
        diff = ((protected[i] - images[i]).abs().amax(0, keepdim=True) * 16).clamp(0, 1)
        diff = torch.where(lesion[i][None], torch.full_like(diff, 0.25), diff)  # lesion shown in grey
        p = out_dir / f"ex{k}_diff.png"
        _png(diff, p)
        names["diff"] = p.name
        names["label"] = ds.classes[int(labels[i])]
        examples.append(names)
    arena = Arena(dataset=ds, profile=profile, context=ctx, eval_index=eval_index, balanced=balanced,
                  own=own or OwnImages(), device=device, batch=batch, black_box=black if models else None)
    parties_out = {}
    for party in parties:
        log.info("third party %s", party.name)
        parties_out[party.name] = party.evaluate(arena, images, protected)
    read = readability(images, protected, lesion, secs / n)
    examples = write_triptychs(out_dir, images, protected, lesion, ex_idx, examples)
    report = {
        "data": ds.name,
        "split": f"validation ({'upstream, by patient / lesion' if ds.name in UPSTREAM else 'seeded md5-group hash'}, "
                 f"split_seed={split_seed})",
        "n_images": n, "image_size": [h, w], "classes": ds.classes,
        "metric": "balanced accuracy" if balanced else "accuracy",
        "profile": {"name": profile.name, "max_area_fraction": profile.max_area_fraction,
                    "alpha_max": profile.alpha_max, "seed": profile.seed, "options": profile.options,
                    "strength": profile.strength, "design": params[0].get("design", "box") if params else None},
        "white_box_models": {k: v.meta.get("val_accuracy") for k, v in white.items()},
        "black_box_models": _model_meta(black),
        "reference_models": _model_meta(reference),
        "lesion_mask": f"Grad-CAM of the surrogates >= {cam_thr:g}/255, "
                       "passed to the engine",
        "accuracy_summary": summary, "accuracy": acc, "quality": quality,
        "readability": read, "third_parties": parties_out,
        "level_targets": level_targets(parties_out, read, balanced),
        "evaluation_resolution": {k: v.meta.get("in_size") for k, v in black.items()},
        "machine": {"cpu": cpu_model(), "cores": __import__("os").cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(engine.device)},
        "command": command or " ".join(sys.argv), "examples": examples,
        "params_first": params[:3],
    }
    # the box design's targets measure a box; a spread mark has none (its bounds are the level_targets)
    report["targets"] = targets_table(ds.name, summary, quality) if report["profile"]["design"] == "box" else []
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(report))
    return report


def _model_meta(models: dict) -> dict:
    return {k: {"val_accuracy": v.meta.get("val_accuracy"), "arch": v.meta.get("arch"),
                "in_size": v.meta.get("in_size"),
                "val_balanced_accuracy": v.meta.get("val_balanced_accuracy"),
                "logo_augment": v.meta.get("logo_augment")} for k, v in models.items()}


def _target_row(t: dict) -> str:
    cells = (t["target"], str(t["models"]), t["bound"], str(t["value"]), "yes" if t["met"] else "NO")
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _html(r: dict) -> str:
    rows = []
    for role, d in r["accuracy"].items():
        for m, conds in d.items():
            for cname, tr in conds.items():
                rows.append(f"<tr><td>{role}</td><td>{html.escape(m)}</td><td>{cname}</td>"
                            + "".join(f"<td>{v:.3f}</td>" for v in tr.values()) + "</tr>")
    ex = "".join(
        "<tr>" + "".join(f'<td><img src="{e[t]}" width="200"><br>{t}</td>'
                         for t in ("before", "plain", "after", "diff", "inpainted")) + f"<td>{e['label']}</td></tr>"
        for e in r["examples"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>MIAD-MARK evaluation</title>
<style>td,th{{border:1px solid #ccc;padding:3px 6px}}table{{border-collapse:collapse}}</style></head><body>
<h1>MIAD-MARK evaluation: profile {html.escape(r['profile']['name'])} on {html.escape(r['data'])}</h1>
<p>{r['n_images']} validation images, {r['image_size'][0]}x{r['image_size'][1]}; {r.get('metric', 'accuracy')}.
Command: <code>{html.escape(r['command'])}</code></p>
<h2>Accuracy</h2><table><tr><th>role</th><th>model</th><th>condition</th><th>as is</th><th>JPEG q75</th>
<th>resize 1/2</th></tr>
{''.join(rows)}</table>
<h2>Targets</h2><table><tr><th>target</th><th>models</th><th>bound</th><th>measured</th><th>met</th></tr>
{''.join(_target_row(t) for t in r.get('targets', []))}</table>
<h2>Quality</h2><pre>{html.escape(json.dumps(r['quality'], indent=2))}</pre>
<h2>Examples (difference x16; lesion mask in grey; inpainted = TELEA over the box)</h2><table>{ex}</table></body></html>
"""


def _command(args) -> str:
    import shlex

    parts = ["miadmark", "evaluate", "--data", args.data, "--profile", args.profile or DEFAULT_PROFILE,
             "--out", args.out, "--limit", str(args.limit), "--seed", str(args.seed)]
    if args.models:
        parts += ["--models", *args.models]
    if getattr(args, "reference_models", None):
        parts += ["--reference-models", *args.reference_models]
    for flag, value, default in (("--max-area-fraction", args.max_area_fraction, 1 / 9),
                                 ("--alpha-max", args.alpha_max, 0.6)):
        if value != default:  # every setting that shaped the report is in its command
            parts += [flag, repr(value)]
    if getattr(args, "options", None):
        parts += ["--options", args.options]
    if getattr(args, "third_parties", None) is not None:
        parts += ["--third-parties", *args.third_parties]
    if getattr(args, "third_party_options", None):
        parts += ["--third-party-options", args.third_party_options]
    if getattr(args, "own_images", 1000) != 1000:
        parts += ["--own-images", str(args.own_images)]
    if getattr(args, "own_profile", ""):
        parts += ["--own-profile", args.own_profile]
    if getattr(args, "own_options", None):
        parts += ["--own-options", args.own_options]
    if getattr(args, "strength", None):
        parts += ["--strength", args.strength]
    return " ".join(shlex.quote(p) for p in parts)


def main(args) -> int:
    torch.set_num_threads(int(getattr(args, "threads", 2) or 2))
    options = json.loads(args.options) if getattr(args, "options", None) else {}
    profile = Profile(name=resolve_profile(args.profile, args.device), seed=args.seed, options=options,
                      max_area_fraction=args.max_area_fraction, alpha_max=args.alpha_max,
                      strength=getattr(args, "strength", None))
    own_options = json.loads(args.own_options) if getattr(args, "own_options", None) else None
    rep = run_evaluation(args.data, profile, args.out, models=args.models,
                         reference_models=getattr(args, "reference_models", None), limit=args.limit, batch=args.batch,
                         device=args.device, n_examples=getattr(args, "examples", 4),
                         command=_command(args), progress=getattr(args, "progress", True),
                         third_parties=getattr(args, "third_parties", None),
                         third_party_options=json.loads(args.third_party_options)
                         if getattr(args, "third_party_options", None) else None,
                         own=OwnImages(n=getattr(args, "own_images", 1000), profile=getattr(args, "own_profile", ""),
                                       options=own_options))
    s = rep["accuracy_summary"]
    for role in s:
        if role == "models":
            continue
        for cname in s[role]:
            print(f"{role:17s} {cname:26s} " + "  ".join(f"{t}={v['mean']:.3f}" for t, v in s[role][cname].items()))
    q = rep["quality"]
    print(f"lesion pixels changed {q['lesion_pixels_changed']}, pixels changed {q['fraction_pixels_changed']:.4f}, "
          f"SSIM outside {q['ssim_outside_logo']:.4f}, PSNR outside {q['psnr_outside_logo_db']['mean_finite']} dB, "
          f"contrast transmission {q['contrast_transmission_in_box']}, {q['seconds_per_image']:.3f} s/image")
    for name, tp in rep["third_parties"].items():
        print(f"third party {name:15s} clean {tp['mean']['clean']}  protected {tp['mean']['protected']}  {tp['cost']}")
    r = rep["readability"]
    print(f"over the anatomy: contrast transmission {r['contrast_transmission']}, SSIM {r['ssim_anatomy']}, "
          f"PSNR {r['psnr_db']} dB")
    level = rep["profile"]["strength"] or DEFAULT_STRENGTH  # every level's bounds are in report.json
    for t in rep["level_targets"].get(level, []):
        print(f"{level:8s} {t['target']:22s} {t['bound']:24s} {t['value']}  {'met' if t['met'] else 'NOT met'}")
    for t in rep["targets"]:
        print(f"target {t['target']:22s} {t['bound']:28s} measured {t['value']}  {'met' if t['met'] else 'NOT met'}")
    return 0
