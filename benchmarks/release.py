"""`miadmark release` throughput: instances/s with 1 and 2 Ray workers, against baselines in the same run.

    .venv/bin/python benchmarks/release.py [--slices 48] [--transfer-slices 16] [--json benchmarks/release_cpu.json]

Starts an archive Orthanc (DICOMweb) holding the first N slices of the real CT series, and for each
run a fresh destination Orthanc; one local Ray for all runs. Per profile it measures:
  engine     the core alone: protect_many on the same slices in this process, one thread (no network);
  pass       a `pass` rule: fetch (WADO-RS) + STOW-RS through the workers, no protection (I/O bound);
  release    `miadmark release` with 1 and 2 workers (one CPU, one torch thread each), --repeat times,
             interleaved (1, 2, 1, 2, ...): the median is reported with every run.
Rates count from the workers being ready (engine loaded) to the last outcome; Ray and actor start-up
are reported apart. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miadmark.machine import describe  # noqa: E402
from orthanc_plugin.testing import OrthancProcess, missing  # noqa: E402

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def engine_rate(paths: list[Path], profile: str, keys: Path) -> float:
    import torch

    from miadmark.dicomio import read_dicom
    from miadmark.engine import Profile, get_engine
    from miadmark.keys import load_certificates, load_identity
    from miadmark.protect import protect_many

    torch.set_num_threads(1)
    datasets = [read_dicom(p) for p in paths]
    engine = get_engine(Profile(name=profile), "cpu")
    signer = load_identity(keys / "hospital.key.pem", keys / "hospital.cert.pem")
    recipients = load_certificates([keys / "research.cert.pem"])
    protect_many(datasets[:1], recipients=recipients, signer=signer, engine=engine)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(datasets), 8):
        protect_many(datasets[i:i + 8], recipients=recipients, signer=signer, engine=engine)
    return len(datasets) / (time.perf_counter() - started)


def release_rate(source: OrthancProcess, tmp: Path, name: str, profile: str, workers: int, slices: int,
                 batch_size: int, action: str) -> dict:
    from cohort_release.driver import RunOptions, release
    from cohort_release.job import ReleaseJob

    config = tmp / f"{name}.yaml"
    rule = (f"  - {{send_to: [bench], action: protect, recipients: [research.cert.pem], profile: {profile}}}\n"
            if action == "protect" else "  - {send_to: [bench], action: pass}\n")
    config.write_text("identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
                      "destinations:\n  bench: {stow_url: 'http://127.0.0.1:9/dicom-web/studies'}\n"
                      f"rules:\n{rule}")
    with OrthancProcess(tmp / name / "dest", aet="DEST", plugin=False) as dest:
        job = ReleaseJob(source=source.url + "/dicom-web", dest=dest.url + "/dicom-web", dest_name="bench",
                         sign_key=str(tmp / "hospital.key.pem"), sign_cert=str(tmp / "hospital.cert.pem"),
                         config=str(config), profile=profile, device="cpu")
        wall = time.perf_counter()
        summary = release(job, RunOptions(state=str(tmp / name / "state"), workers=workers, batch_size=batch_size,
                                          progress=False), say=lambda line: None)
        wall = time.perf_counter() - wall
        arrived = len(dest.instances())
    assert summary.counts.get("sent") == slices == arrived, (summary, arrived)
    return {"run": name, "action": action, "profile": profile, "workers": workers, "instances": slices,
            "batch_size": batch_size,
            "instances_s": round(summary.done_now / summary.elapsed_s, 2), "elapsed_s": round(summary.elapsed_s, 1),
            "wall_s_with_startup": round(wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=48, help="CT slices for the plain profile and pass runs")
    ap.add_argument("--transfer-slices", type=int, default=16, help="CT slices for the default (transfer) profile")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting, interleaved; the median is reported")
    ap.add_argument("--json", default=str(Path(__file__).with_name("release_cpu.json")))
    args = ap.parse_args()
    if missing():
        print(missing(), file=sys.stderr)
        return 2
    import ray

    from miadmark.cli import quiet_pydicom
    from miadmark.keys import new_identity

    quiet_pydicom()
    machine = describe()
    print(machine, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="miadmark-release-bench-"))
    new_identity("hospital", tmp)
    new_identity("research", tmp)
    paths = sorted(CT.glob("*"))[:max(args.slices, args.transfer_slices)]
    started = time.perf_counter()
    ray.init(num_cpus=max(args.workers), include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING")
    ray_start_s = round(time.perf_counter() - started, 1)
    rows = []
    try:
        with OrthancProcess(tmp / "source", aet="ARCHIVE", plugin=False) as source:
            for profile, slices in (("plain", args.slices), ("transfer", args.transfer_slices)):
                for path in paths[:slices]:
                    source.upload(path)
                rows.append({"run": f"engine-{profile}", "action": "engine only", "profile": profile,
                             "workers": 0, "instances": slices,
                             "instances_s": round(engine_rate(paths[:slices], profile, tmp), 2)})
                print(json.dumps(rows[-1]), flush=True)
                for action in (["pass", "protect"] if profile == "plain" else ["protect"]):
                    batch = min(args.batch_size, max(1, slices // (2 * max(args.workers))))  # work for all
                    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
                    for rep in range(args.repeat):  # interleaved: a shared machine's load drifts
                        for workers in args.workers:
                            name = f"{action}-{profile}-{workers}w-{rep}"
                            runs[workers].append(release_rate(source, tmp, name, profile, workers, slices, batch,
                                                              action))
                            print(json.dumps(runs[workers][-1]), flush=True)
                    for workers, done in runs.items():
                        rates = [r["instances_s"] for r in done]
                        rows.append({**done[0], "run": f"{action}-{profile}-{workers}w",
                                     "instances_s": round(statistics.median(rates), 2), "each_run": rates,
                                     "elapsed_s": [r["elapsed_s"] for r in done],
                                     "wall_s_with_startup": [r["wall_s_with_startup"] for r in done]})
                delete_all(source)  # the next profile's cohort has its own slice count
    finally:
        ray.shutdown()
    by = {r["run"]: r["instances_s"] for r in rows}
    ratios = {f"{run}_2w_over_1w": round(by[f"{run}-2w"] / by[f"{run}-1w"], 2)
              for run in ("pass-plain", "protect-plain", "protect-transfer") if f"{run}-2w" in by and f"{run}-1w" in by}
    result = {"machine": machine, "load_at_end": [round(x, 1) for x in os.getloadavg()],
              "command": " ".join(["benchmarks/release.py", *sys.argv[1:]]),
              "ray_start_s": ray_start_s, "results": rows, "scaling": ratios}
    print(json.dumps(ratios))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def delete_all(orthanc: OrthancProcess) -> None:
    import requests

    for orthanc_id in orthanc.instances():
        requests.delete(f"{orthanc.url}/instances/{orthanc_id}", timeout=30).raise_for_status()


if __name__ == "__main__":
    sys.exit(main())
