"""The frontier: accuracy per third party against readability over the anatomy, from evaluation reports.

    python -m miadmark.evaluation.frontier --out docs/evaluation/frontier LABEL=REPORT_DIR ...

writes frontier_tables.md (one table per dataset: readability, then each third party's accuracy, clean
beside protected) and frontier_<dataset>.png (accuracy vs contrast transmission and vs SSIM, one line per
third party), and copies each report's triptychs as <dataset>_<label>_ex<k>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

PARTIES = ["plain", "careful", "careful_marks", "adaptive", "removal_unet", "mark_inpainted", "jpeg_q75",
           "resize_half"]
# third parties that train per setting (on images the tool protected): their clean accuracy differs per row
TRAINED = ("adaptive", "removal_unet")
COLOURS = {"plain": (31, 119, 180), "careful": (255, 127, 14), "careful_marks": (188, 189, 34),
           "adaptive": (44, 160, 44),
           "removal_unet": (214, 39, 40), "mark_inpainted": (148, 103, 189), "jpeg_q75": (140, 86, 75),
           "resize_half": (127, 127, 127)}


def load_reports(pairs: list[str]) -> list[tuple[str, dict]]:
    out = []
    for pair in pairs:
        label, _, path = pair.partition("=")
        p = Path(path)
        out.append((label, json.loads((p / "report.json" if p.is_dir() else p).read_text()) | {"_dir": str(p)}))
    return out


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def table(rows: list[tuple[str, dict]]) -> str:
    """One markdown table for the reports of one dataset: clean accuracy in the first row (for the third parties
    that train per setting, beside each row's protected accuracy in brackets)."""
    parties = [p for p in PARTIES if any(p in r["third_parties"] for _, r in rows)]
    head = ["setting", "transmission", "SSIM anatomy", "PSNR dB", "px changed", "lesion px", "s/img", *parties]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = rows[0][1]["third_parties"]
    clean = [_fmt(first[p]["mean"]["clean"]) if p in first else "" for p in parties]
    lines.append("| clean (no mark) | 1.000 | 1.000 | | 0 | 0 | | " + " | ".join(clean) + " |")
    for label, r in rows:
        q, tp = r["readability"], r["third_parties"]
        cells = [label, _fmt(q["contrast_transmission"]), _fmt(q["ssim_anatomy"]), _fmt(q["psnr_db"]),
                 _fmt(q["fraction_pixels_changed"]), _fmt(q["lesion_pixels_changed"]), _fmt(q["seconds_per_image"])]
        cells += [(_fmt(tp[p]["mean"]["protected"]) + (f" ({_fmt(tp[p]['mean']['clean'])})" if p in TRAINED else ""))
                  if p in tp else "" for p in parties]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(rows: list[tuple[str, dict]]) -> str:
    """Per setting and level: each target met or not."""
    lines = ["| setting | level | met | not met |", "|---|---|---|---|"]
    for label, r in rows:
        for level, ts in r.get("level_targets", {}).items():
            met = ", ".join(f"{t['target']} {_fmt(t['value'])}" for t in ts if t["met"])
            miss = ", ".join(f"{t['target']} {_fmt(t['value'])} ({t['bound']})" for t in ts if not t["met"])
            lines.append(f"| {label} | {level} | {met or '-'} | {miss or '-'} |")
    return "\n".join(lines)


def plot(rows: list[tuple[str, dict]], path: Path, title: str) -> None:
    """Two panels (accuracy vs transmission, vs SSIM over the anatomy), a line per third party, clean at 1."""
    W, H, m = 520, 380, 48
    img = Image.new("RGB", (2 * W, H + 70), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), title, fill="black")
    for k, (key, name) in enumerate((("contrast_transmission", "contrast transmission"),
                                     ("ssim_anatomy", "SSIM over the anatomy"))):
        ox = k * W
        x0, y0, x1, y1 = ox + m, 30, ox + W - 16, H - m + 30
        lo = min([0.5] + [r["readability"][key] for _, r in rows if r["readability"][key] is not None])
        lo = int(lo * 10) / 10

        def px(v, a, lo=lo, x0=x0, x1=x1, y0=y0, y1=y1):
            return x0 + (v - lo) / (1 - lo) * (x1 - x0), y1 - a * (y1 - y0)

        d.rectangle([x0, y0, x1, y1], outline="black")
        for t in range(11):
            v = lo + (1 - lo) * t / 10
            d.line([px(v, 0)[0], y1, px(v, 0)[0], y1 + 4], fill="black")
            if t % 2 == 0:
                d.text((px(v, 0)[0] - 10, y1 + 6), f"{v:.2f}", fill="black")
            d.line([x0 - 4, px(lo, t / 10)[1], x0, px(lo, t / 10)[1]], fill="black")
            if t % 2 == 0:
                d.text((x0 - 28, px(lo, t / 10)[1] - 5), f"{t / 10:.1f}", fill="black")
        d.text((x0 + 120, y1 + 20), f"{name} (1 = untouched)", fill="black")
        d.text((ox + 4, y0 - 14), "accuracy", fill="black")
        for p in PARTIES:
            first = rows[0][1]["third_parties"]
            pts = [(1.0, first[p]["mean"]["clean"])] if p in first else []
            pts += [(r["readability"][key], r["third_parties"][p]["mean"]["protected"]) for _, r in rows
                    if p in r["third_parties"] and r["readability"][key] is not None]
            pts = sorted(pts, reverse=True)
            xy = [px(v, a) for v, a in pts]
            if len(xy) > 1:
                d.line(xy, fill=COLOURS[p], width=2)
            for x, y in xy:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLOURS[p])
    for i, p in enumerate(PARTIES):
        x = 10 + i * 125
        d.rectangle([x, H + 48, x + 10, H + 58], fill=COLOURS[p])
        d.text((x + 14, H + 47), p, fill="black")
    img.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m miadmark.evaluation.frontier", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the tables, plots and pictures")
    ap.add_argument("reports", nargs="+", metavar="LABEL=REPORT_DIR")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_ds: dict[str, list] = {}
    for label, r in load_reports(args.reports):
        by_ds.setdefault(r["data"], []).append((label, r))
    md = []
    for ds, rows in by_ds.items():
        md += [f"### {ds} (n = {rows[0][1]['n_images']}, {rows[0][1].get('metric', 'accuracy')})", "", table(rows), "",
               f"![frontier {ds}](frontier_{ds}.png)", "", targets_table(rows), ""]
        plot(rows, out / f"frontier_{ds}.png", f"{ds}: accuracy of each third party vs readability over the anatomy")
        for label, r in rows:
            for k, e in enumerate(r.get("examples", [])):
                if "triptych" in e:
                    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
                    shutil.copy(Path(r["_dir"]) / e["triptych"], out / f"{ds}_{safe}_ex{k}.png")
    (out / "frontier_tables.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
