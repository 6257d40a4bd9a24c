"""Export throughput through the Orthanc plugin, and REST latency while it protects.

    .venv/bin/python benchmarks/orthanc_export.py [--slices 96] [--profile plain]

Starts a hospital Orthanc (plugin) and a plain receiving Orthanc on loopback, uploads the CT
series, then:
  1. `pass` export (Orthanc's own C-STORE route, through the plugin's override): instances/s;
  2. `protect` export, asynchronous, while GET /system is polled every 50 ms: instances/s,
     CPU seconds of the hospital Orthanc process, GET /system latency (median, p95, max).
Numbers, not pass/fail.
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miadmark.keys import new_identity  # noqa: E402
from orthanc_plugin.testing import OrthancProcess, missing  # noqa: E402

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=96)
    parser.add_argument("--profile", default="plain", help="watermark profile of the protect rule")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--strip", action="store_true",
                        help="the receiver is an Orthanc with the plugin and the research key (strips on ingestion)")
    args = parser.parse_args()
    if missing():
        print(missing(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="miadmark-orthanc-bench-") as folder:
        return measure(args, Path(folder))


def measure(args, tmp: Path) -> int:
    """Both exports between two Orthancs in tmp: the result printed as JSON; 0 when the protect job succeeded."""
    new_identity("hospital", tmp)
    new_identity("research", tmp)
    (tmp / "hospital.yaml").write_text(
        "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
        "destinations:\n  clean: {orthanc_modality: clean}\n  protected: {orthanc_modality: protected}\n"
        "rules:\n  - {send_to: [clean], action: pass}\n"
        f"  - {{send_to: [protected], action: protect, recipients: [research.cert.pem], profile: {args.profile}}}\n"
        f"orthanc: {{batch_size: {args.batch_size}}}\n")
    (tmp / "research.yaml").write_text("receiver:\n  quarantine: quarantine/\n"
                                       "  keys: [{key: research.key.pem, cert: research.cert.pem}]\n"
                                       "  trust: [hospital.cert.pem]\n")
    files = sorted(CT.glob("*.dcm"))[:args.slices]
    receiver_kwargs = {"plugin": True, "miadmark_config": tmp / "research.yaml"} if args.strip else {"plugin": False}
    with OrthancProcess(tmp / "receiver", aet="RECEIVER", **receiver_kwargs) as receiver, \
         OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=tmp / "hospital.yaml",
                        modalities={"clean": receiver, "protected": receiver}) as hospital:
        for f in files:
            study = hospital.upload(f)["ParentStudy"]
        pid, receiver_pid = hospital.process.pid, receiver.process.pid

        t0 = time.perf_counter()
        r = hospital.post("/modalities/clean/store", {"Resources": [study], "Synchronous": True})
        r.raise_for_status()
        pass_s = time.perf_counter() - t0

        idle = []
        for _ in range(20):
            t = time.perf_counter()
            requests.get(hospital.url + "/system", timeout=30).raise_for_status()
            idle.append(time.perf_counter() - t)

        cpu0, rcpu0 = cpu_seconds(pid), cpu_seconds(receiver_pid)
        t0 = time.perf_counter()
        r = hospital.post("/modalities/protected/store", {"Resources": [study], "Asynchronous": True})
        r.raise_for_status()
        job_path = r.json()["Path"]
        latencies, state = [], "Pending"
        while state not in ("Success", "Failure"):
            t = time.perf_counter()
            requests.get(hospital.url + "/system", timeout=60).raise_for_status()
            latencies.append(time.perf_counter() - t)
            state = hospital.get_json(job_path)["State"]
            time.sleep(0.05)
        protect_s = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
        job = hospital.get_json(job_path)
        if args.strip:
            stripped = receiver.get_json("/miadmark/status")["Receiver"]["Counts"]["stripped"]
        receiver_cpu = cpu_seconds(receiver_pid) - rcpu0

    ms = lambda xs: round(1000 * xs, 1)  # noqa: E731
    lat = sorted(latencies)
    result = {
        "slices": len(files), "profile": args.profile, "cpus": os.cpu_count(), "job_state": job["State"],
        "pass_instances_per_s": round(len(files) / pass_s, 1),
        "protect_instances_per_s": round(len(files) / protect_s, 2),
        "protect_wall_s": round(protect_s, 1),
        "protect_job_seconds": job["Content"].get("Seconds"),
        "hospital_cpu_s_during_protect": round(cpu, 1),
        "hospital_cpu_cores_busy": round(cpu / protect_s, 2),
        "receiver": "Orthanc + plugin, strips on ingestion" if args.strip else "plain Orthanc",
        "receiver_cpu_s_during_protect": round(receiver_cpu, 1),
        **({"receiver_stripped": stripped} if args.strip else {}),
        "get_system_idle_ms_median": ms(statistics.median(idle)),
        "get_system_during_protect_ms": {"n": len(lat), "median": ms(statistics.median(lat)),
                                         "p95": ms(lat[int(0.95 * (len(lat) - 1))]), "max": ms(lat[-1])},
    }
    print(json.dumps(result, indent=2))
    return 0 if job["State"] == "Success" else 1


if __name__ == "__main__":
    sys.exit(main())
