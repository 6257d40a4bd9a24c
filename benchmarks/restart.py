"""Recovery after kill -9 of `miadmark gateway`: time to deliver all and forwarding CPU, against a
no-kill baseline measured in the same run.

    .venv/bin/python benchmarks/restart.py [--count 30] [--kill-after 8]

Three kinds of process on loopback: this script (the sender), `miadmark gateway` (rule protect,
profile plain, forwarding in its child process) and `miadmark receive` (strips, stores).
    baseline  send COUNT slices, wait until the receiver stored them all            (gateway A, spool A)
    kill      send COUNT slices, SIGKILL the gateway once KILL_AFTER were stored,
              restart it on the same spool, wait until all are stored                (gateway B, spool B)
Reports seconds from the first send to the last store, CPU seconds of the gateway's processes
(receiving + forwarding child), and the receiver's duplicate deliveries (harmless: idempotent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gateway import DEFAULT_FILES, cpu_seconds, free_port, machine, wait_port  # noqa: E402
from dicom_node.storescu import send_files  # noqa: E402

CONFIG = """\
identity: {{key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  bind: 127.0.0.1
  port: {gw_port}
  spool: {spool}/
  audit: {spool}-audit.jsonl
  device: cpu
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
    profile: plain
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: quarantine/
  plain: refuse
  keys: [{{key: keys/research.key.pem, cert: keys/research.cert.pem}}]
  trust: [keys/hospital.cert.pem]
"""


def receiver_events(audit: Path, sop_uids: set[str]) -> tuple[set[str], int]:
    """(original SOP UIDs of `sop_uids` stored, duplicate deliveries of them) in the receiver's audit log."""
    stored, dups = set(), 0
    try:
        lines = audit.read_text().splitlines()
    except FileNotFoundError:
        return stored, dups
    for line in lines:
        rec = json.loads(line)
        uid = rec.get("sop_instance_uid")
        if uid in sop_uids:
            if rec.get("event") == "stored":
                stored.add(uid)
            elif rec.get("event") == "duplicate":
                dups += 1
    return stored, dups


def own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=Path, default=DEFAULT_FILES)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--kill-after", type=int, default=8, help="SIGKILL once this many were stored")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    files = sorted(args.files.glob("*.dcm"))[: args.count]
    import pydicom
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    print(machine())
    print(f"data: {len(files)} CT slices from {args.files}")

    work = Path(tempfile.mkdtemp(prefix="miadmark-restart-"))
    from miadmark.keys import new_identity
    new_identity("hospital", work / "keys")
    new_identity("research", work / "keys")
    rx_port = free_port()
    cmd = [sys.executable, "-m", "miadmark.cli"]
    log = open(work / "services.log", "wb")  # noqa: SIM115 - closed in the finally below
    procs: list[subprocess.Popen] = []

    def start_gateway(name: str, port: int) -> subprocess.Popen:
        (work / f"{name}.yaml").write_text(CONFIG.format(gw_port=port, rx_port=rx_port, spool=name))
        gw = subprocess.Popen(cmd + ["gateway", "--config", f"{name}.yaml", "--forward", "process"], cwd=work,
                              stdout=log, stderr=log)
        procs.append(gw)
        wait_port(port, gw)
        return gw

    def until_stored(audit: Path, n: int, end: float) -> None:
        while len(receiver_events(audit, uids)[0]) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(receiver_events(audit, uids)[0])} of {n} stored")
            time.sleep(0.05)

    try:
        results = {}
        for run in ("A", "B"):
            # one receiver per run, each with its own store: the kill run starts from an empty store
            (work / f"rx{run}.yaml").write_text(CONFIG.format(gw_port=0, rx_port=rx_port, spool="unused")
                                                .replace("store: received/", f"store: received{run}/")
                                                .replace("quarantine: quarantine/",
                                                         f"quarantine: quarantine{run}/\n  audit: rx{run}.jsonl"))
            rx = subprocess.Popen(cmd + ["receive", "--config", f"rx{run}.yaml"], cwd=work, stdout=log, stderr=log)
            procs.append(rx)
            wait_port(rx_port, rx)
            audit = work / f"rx{run}.jsonl"
            port = free_port()
            gw = start_gateway(f"spool{run}", port)
            time.sleep(2.0)  # the forwarding child imports torch: not part of delivery
            startup = cpu_seconds(gw.pid)  # CPU of a gateway start (both processes, torch imported)
            t0 = time.perf_counter()
            statuses = send_files("127.0.0.1", port, files, called_ae="RESEARCH", calling_ae="BENCH")
            assert statuses == [0] * len(files), statuses
            end = time.monotonic() + args.timeout
            cpu = 0.0
            killed_at = stored_at_kill = 0
            if run == "B":
                until_stored(audit, args.kill_after, end)
                cpu = cpu_seconds(gw.pid)
                killed_at = time.perf_counter()
                gw.kill()  # SIGKILL; the child dies with it (PDEATHSIG)
                gw.wait()
                stored_at_kill = len(receiver_events(audit, uids)[0])
                time.sleep(0.5)
                gw = start_gateway(f"spool{run}", port)
            until_stored(audit, len(files), end)
            elapsed = time.perf_counter() - t0
            cpu += cpu_seconds(gw.pid)  # from process start: a restart's start-up is part of its cost
            stored, dups = receiver_events(audit, uids)
            results[run] = (elapsed, cpu, dups)
            if run == "A":
                print(f"baseline (no kill): all {len(stored)} stored in {elapsed:6.1f} s; gateway CPU {cpu:5.1f} s "
                      f"(of which start-up {startup:.1f} s); {dups} duplicate(s)")
                results["startup"] = startup
            else:
                print(f"kill -9 after {stored_at_kill} stored, restart: all {len(stored)} stored in {elapsed:6.1f} s "
                      f"({time.perf_counter() - killed_at - (time.perf_counter() - t0 - elapsed):.1f} s after the "
                      f"kill); gateway CPU {cpu:5.1f} s (two start-ups); {dups} duplicate(s) (harmless)")
            gw.send_signal(signal.SIGTERM)
            gw.wait(60)
            rx.send_signal(signal.SIGTERM)
            rx.wait(30)
        (ea, ca, _), (eb, cb, _) = results["A"], results["B"]
        extra = cb - ca - results["startup"]
        print(f"ratio kill/baseline: time {eb / ea:.2f}, CPU {cb / ca:.2f}; CPU beyond the second start-up "
              f"{extra:+.1f} s (recovered instances cost about what the normal path costs when this is near 0)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
