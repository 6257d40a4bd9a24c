"""Engine throughput: `fast` (one generator pass), the default (`cloak`, 30 steps) and `plain` (the cost floor:
a fixed logo blend) in the same run, at batch 1, 16 and 64, on 224 px brain-MRI images and on the 512 px CT
slices of ../shared/data/dicom/ct_chest_lidc0314 (model domain, the engine alone), then end to end per slice on
the real CT files (decode -> protect -> record -> encode, protect_many through benchmarks/core.protect_series).
Ratios: each profile to `plain` and to the default, measured in the same process. `--pgd10` adds plain PGD-10
(L-inf 8/255 on the same surrogates) as the attack-cost yardstick of earlier runs.

    .venv/bin/python benchmarks/engine.py [--device auto] [--batches 1 16 64] [--e2e-batches 16] [--threads 2] \\
        [--json docs/evaluation/benchmark_cpu_fast.json] [--tiny]

--tiny: batch 1, 64 px and 2 CT slices, no minimum time (the tests run it; benchmarks/gpu.sh --tiny too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.core import SERIES, protect_series  # noqa: E402
from miadmark.engine import DEFAULT_PROFILE, Profile, get_engine  # noqa: E402
from miadmark.engine.ensemble import Ensemble  # noqa: E402
from miadmark.machine import cpu_model  # noqa: E402


def images(n: int, size: int) -> torch.Tensor:
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri"
    if data.exists():
        from miadmark.surrogates.data import load_dataset

        ds = load_dataset(data)
        x = ds.split(val=True)[0][:n].float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.clamp(0, 1)
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def ct_slices(n: int) -> torch.Tensor:
    """The first n CT slices in the model domain (what protect hands the engine)."""
    from miadmark.dicomio import read_dicom
    from miadmark.pixels import decode, to_model

    out = []
    for f in sorted(SERIES.glob("*.dcm"))[:n]:
        ds = read_dicom(f)
        out.append(torch.from_numpy(to_model(ds, decode(ds))[0]))
    return torch.cat(out)


def pgd10(ens: Ensemble, x: torch.Tensor, eps: float = 8 / 255, steps: int = 10) -> torch.Tensor:
    with torch.no_grad():
        y = ens.predict(ens.prep(x)).argmax(1)
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logits, _ = ens.outputs(ens.prep(adv))
        loss = F.cross_entropy(torch.stack(logits).mean(0), y)
        (g,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = (x + (adv + eps / 4 * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def timed(fn, x, device, min_seconds: float) -> float:
    """Images per second: repeated until min_seconds have passed (at least once), after a warm-up."""
    fn(x[:1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, done = time.perf_counter(), 0
    while done == 0 or time.perf_counter() - t0 < min_seconds:
        fn(x)
        done += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def ratios(row: dict, names: list[str], unit: str) -> None:
    for name in names:
        for base in ("plain", DEFAULT_PROFILE):
            if name != base and f"{base}_{unit}" in row:
                row[f"{name}_vs_{base}"] = round(row[f"{name}_{unit}"] / row[f"{base}_{unit}"], 3)


def end_to_end(engines: dict, slices: int, batch: int) -> dict:
    """Slices per second through protect_many on the real CT files, each profile in turn (engine warm), `batch`
    slices per call."""
    from miadmark.dicomio import read_dicom
    from miadmark.keys import load_identity, new_identity

    files = sorted(SERIES.glob("*.dcm"))[:slices]
    originals = [read_dicom(f) for f in files]
    row = {"slices": len(files), "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        signer = load_identity(*new_identity("hospital", tmp))
        research = load_identity(*new_identity("research", tmp))
        for name, eng in engines.items():
            protect_series(originals[:1], eng, 1, [research.cert], signer)  # warm: models loaded
            _, per_slice = protect_series(originals, eng, batch, [research.cert], signer)
            row[f"{name}_slices_s"] = round(1 / per_slice, 2)
    ratios(row, list(engines), "slices_s")
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 16, 64])
    ap.add_argument("--engines", nargs="*", default=["fast", DEFAULT_PROFILE, "plain"])
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each measurement at least this long")
    ap.add_argument("--e2e-slices", type=int, default=48, help="CT slices end to end (0: skip)")
    ap.add_argument("--e2e-batches", "--e2e-batch", type=int, nargs="*", default=[16])
    ap.add_argument("--tiny", action="store_true", help="batch 1, 64 px images, 2 CT slices, no minimum time")
    ap.add_argument("--pgd10", action="store_true", help="also time plain PGD-10 on the engine images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    size = 224
    if args.tiny:
        args.batches, args.min_seconds, args.e2e_slices, args.e2e_batches, size = [1], 0.0, 2, [2], 64
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
            "note": "other jobs may share the machine (see load_average_start): compare ratios within one run"}
    print(json.dumps(info), flush=True)
    engines = {name: get_engine(Profile(name=name), dev) for name in args.engines}
    ens = Ensemble.get(None, dev)
    sets = {f"brain_mri_{size}px": images(max(args.batches), size), "ct_512px": ct_slices(max(args.batches))}
    rows = []
    for label, x_all in sets.items():
        x_all = x_all.to(dev)
        for b in args.batches:
            x = x_all[:b]
            row = {"images": label, "batch": len(x)}
            if args.pgd10:
                row["pgd10_img_s"] = round(timed(lambda t: pgd10(ens, t), x, dev, args.min_seconds), 2)
            for name, eng in engines.items():
                row[f"{name}_img_s"] = round(timed(lambda t, e=eng: e.watermark(t, None, []), x, dev,
                                                   args.min_seconds), 2)
            ratios(row, list(engines), "img_s")
            rows.append(row)
            print(json.dumps(row), flush=True)
    e2e = []
    for batch in args.e2e_batches if args.e2e_slices else []:
        e2e.append(end_to_end(engines, args.e2e_slices, batch))
        print(json.dumps({"end_to_end_ct_512px": e2e[-1]}), flush=True)
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": " ".join(sys.argv), "engine_only": rows,
                                               "end_to_end_ct_512px": e2e}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
