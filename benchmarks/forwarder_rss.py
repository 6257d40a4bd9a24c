"""Steady state: the forwarding process's resident memory over many instances through the gateway.

    .venv/bin/python benchmarks/forwarder_rss.py [--count 2000] [--route protect] [--profile NAME] [--json out]

`miadmark receive` and `miadmark gateway` as services (benchmarks/ct_series.Site); this script sends the CT
series of ../shared/data/dicom/ct_chest_lidc0314 again and again (a new receipt each time: the research node
stores the first and answers the rest as duplicates) in associations of --chunk instances, and samples the
forwarding child's VmRSS against the number of instances it has delivered. Reports the samples, the RSS
after the first quarter and at the end, and the growth between them: flat means the growth stays within
allocator noise, whatever --count is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ct_series import CT, Site  # noqa: E402


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def forwarding_pid(gateway_pid: int, timeout: float = 60) -> int:
    """The gateway's forwarding child (multiprocessing spawn; not its resource tracker)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in children(gateway_pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmd:
                return pid
        time.sleep(0.2)
    raise TimeoutError("no forwarding process")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def delivered(audit: Path) -> int:
    try:
        return audit.read_bytes().count(b'"event":"sent"')
    except FileNotFoundError:
        return 0


def run(count: int, route: str, profile: str | None, chunk: int, timeout_s: float, keep: bool = False) -> dict:
    from dicom_node.storescu import send_files
    from miadmark.machine import describe
    files = sorted(CT.glob("*.dcm"))
    plan = [files[i % len(files)] for i in range(count)]
    work = Path(tempfile.mkdtemp(prefix="miadmark-rss-"))
    site = Site(work, profile=profile)
    audit = work / "gateway-audit.jsonl"
    samples: list[tuple[int, float]] = []
    try:
        site.start()
        fwd = forwarding_pid(site.procs["gateway"].pid)
        called = "RESEARCH" if route == "protect" else "ARCHIVE"
        errors: list[str] = []

        def send_all():
            for i in range(0, count, chunk):
                todo = plan[i:i + chunk]
                for _ in range(5):  # as a PACS does: what was not acknowledged is sent again
                    try:
                        statuses = send_files("127.0.0.1", site.gw_port, todo, called_ae=called, calling_ae="PACS")
                    except Exception as exc:  # noqa: BLE001 - reported, retried
                        errors.append(f"chunk {i}: {exc!r}")
                        continue
                    todo = [f for f, st in zip(todo, statuses) if st != 0] + todo[len(statuses):]
                    if not todo:
                        break
                    errors.append(f"chunk {i}: {len(todo)} not acknowledged")
        sender = threading.Thread(target=send_all, daemon=True)
        began = time.monotonic()
        sender.start()
        step = max(1, count // 20)
        while time.monotonic() - began < timeout_s:
            done = delivered(audit)
            if done and (not samples or done >= samples[-1][0] + step or done >= count):
                samples.append((done, round(rss_mb(fwd), 1)))
            if done >= count:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - began
        sender.join(60)
        samples = samples or [(0, round(rss_mb(fwd), 1))]
        quarter = next((rss for n, rss in samples if n >= count // 4), samples[-1][1])
        return {
            "command": "python benchmarks/forwarder_rss.py " + " ".join(sys.argv[1:]),
            "machine": describe(), "route": route, "profile": profile or "(default)", "count": count,
            "delivered": delivered(audit), "seconds": round(seconds, 1), "send_retries": errors,
            "rss_first_delivery_mb": samples[0][1], "rss_quarter_mb": quarter, "rss_end_mb": samples[-1][1],
            "growth_after_quarter_mb": round(samples[-1][1] - quarter, 1),
            # a sample may fall inside a protection round: compare the peaks of the two halves too
            "peak_first_half_mb": max(rss for n, rss in samples if n <= count // 2),
            "peak_second_half_mb": max((rss for n, rss in samples if n > count // 2), default=samples[-1][1]),
            "samples": samples, "work": str(work) if keep else None,
        }
    finally:
        site.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--route", choices=["protect", "pass"], default="protect")
    ap.add_argument("--profile", default="", help="the protect rule's profile (default: no profile line)")
    ap.add_argument("--chunk", type=int, default=96, help="instances per sending association")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.count, args.route, args.profile or None, args.chunk, args.timeout, args.keep)
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["delivered"] >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
