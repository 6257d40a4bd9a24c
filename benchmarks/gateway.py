"""Throughput of the dicom_node gateway against a direct transfer, measured in the same run.

    .venv/bin/python benchmarks/gateway.py [--count 288] [--protect-count 96] [--device cpu]

Three processes on loopback: this script (the sender, one association), `miadmark gateway` and
`miadmark receive` (plain instances stored durably, protected ones stripped and stored).
    direct   sender -> receiver                                  (instances/s, until all acknowledged)
    pass     sender -> gateway -> receiver                       (until the receiver stored them all)
    protect  sender -> gateway (protect, profile plain) -> receiver (strips) (same)
Prints the machine first: judge the gateway by its ratio to `direct` on the same machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicom_node.storescu import send_files  # noqa: E402
from dicomnet.ports import free_port  # noqa: E402
from miadmark.machine import describe  # noqa: E402

DEFAULT_FILES = REPO.parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def machine() -> str:
    import pydicom
    import pynetdicom

    return f"{describe()}, pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}"


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live children (this one when pid is None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    pids, total = [pid], 0.0
    for entry in Path("/proc").iterdir():  # children: the gateway's forwarding process
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    for p in pids:
        try:
            fields = _stat(p)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


DELIVERED = (b'"event":"stored"', b'"event":"duplicate"')  # a cycled resend of a stored instance: a duplicate


def count_lines(path: Path, words: tuple[bytes, ...] = DELIVERED) -> int:
    """Audit lines holding any of `words`: by default each instance the receiver acknowledged as kept."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if any(w in line for w in words))
    except FileNotFoundError:
        return 0


def empty_store(store: Path) -> None:
    """The receiver's store emptied between steps: each step's instances are new to it, none a duplicate."""
    for child in store.iterdir() if store.exists() else []:  # a file may be renamed meanwhile (its .part)
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=Path, default=DEFAULT_FILES, help="folder of DICOM files to send (cycled)")
    ap.add_argument("--count", type=int, default=288, help="instances per pass/direct run")
    ap.add_argument("--protect-count", type=int, default=96, help="instances for the protect run (0 = skip)")
    ap.add_argument("--device", default="cpu", help="protect device: cpu, cuda, auto")
    ap.add_argument("--forward", default="process", choices=["process", "thread"],
                    help="gateway forwarding in a child process (default, as deployed) or in threads")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)

    files = sorted(args.files.glob("*.dcm"))
    if not files:
        print(f"no .dcm files in {args.files}", file=sys.stderr)
        return 1
    print(machine())
    size = sum(f.stat().st_size for f in files) / len(files)
    print(f"data: {len(files)} files from {args.files} ({size / 1e3:.0f} KB each), cycled")

    work = Path(tempfile.mkdtemp(prefix="miadmark-bench-"))
    from miadmark.keys import new_identity
    new_identity("hospital", work / "keys")
    new_identity("research", work / "keys")
    gw_port, rx_port = free_port(), free_port()
    (work / "site.yaml").write_text(f"""\
identity: {{key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  bind: 127.0.0.1
  port: {gw_port}
  spool: spool/
  device: {args.device}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
  archive:  {{ae_title: ARCHIVE, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
    profile: plain
  - when: {{called_ae: ARCHIVE}}
    send_to: [archive]
    action: pass
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: quarantine/
  keys: [{{key: keys/research.key.pem, cert: keys/research.cert.pem}}]
  trust: [keys/hospital.cert.pem]
  plain: store
""")
    audit = work / "receiver-audit.jsonl"
    cmd = [sys.executable, "-m", "miadmark.cli"]
    log = open(work / "services.log", "wb")
    procs = []
    try:
        rx = subprocess.Popen(cmd + ["receive", "--config", "site.yaml"], cwd=work, stdout=log, stderr=log)
        procs.append(rx)
        gw = subprocess.Popen(cmd + ["gateway", "--config", "site.yaml", "--forward", args.forward], cwd=work,
                              stdout=log, stderr=log)
        procs.append(gw)
        wait_port(rx_port, rx)
        wait_port(gw_port, gw)
        send_files("127.0.0.1", rx_port, files[:2], called_ae="RESEARCH", calling_ae="BENCH")  # warm up
        send_files("127.0.0.1", gw_port, files[:2], called_ae="ARCHIVE", calling_ae="BENCH")
        end = time.monotonic() + 120  # the warm-up delivered, or its late lines would count in the first step
        while count_lines(audit) < 4 and time.monotonic() < end:
            time.sleep(0.05)

        batch = list(itertools.islice(itertools.cycle(files), args.count))
        results = {}

        pids = {"sender": None, "gateway": gw.pid, "receiver": rx.pid}

        def cpu_snapshot() -> dict[str, float]:
            return {k: cpu_seconds(p) for k, p in pids.items()}

        def cpu_line(before: dict[str, float], n: int) -> str:
            after = cpu_snapshot()
            return "CPU ms/instance: " + ", ".join(f"{k} {(after[k] - before[k]) * 1000 / n:.1f}" for k in pids)

        def through_gateway(called: str, items: list[Path], timeout: float) -> tuple[float, float]:
            before = count_lines(audit)
            t0 = time.perf_counter()
            statuses = send_files("127.0.0.1", gw_port, items, called_ae=called, calling_ae="BENCH")
            accepted = time.perf_counter() - t0
            assert statuses == [0] * len(items), set(statuses)
            end = time.monotonic() + timeout
            while count_lines(audit) < before + len(items):
                if time.monotonic() > end:
                    raise TimeoutError(f"{called}: not all delivered in {timeout} s")
                time.sleep(0.02)
            return len(items) / (time.perf_counter() - t0), len(items) / accepted

        cpu0 = cpu_snapshot()
        t0 = time.perf_counter()
        statuses = send_files("127.0.0.1", rx_port, batch, called_ae="RESEARCH", calling_ae="BENCH")
        results["direct"] = len(batch) / (time.perf_counter() - t0)
        assert statuses == [0] * len(batch)
        print(f"direct C-STORE to the receiver     : {results['direct']:7.1f} instances/s ({len(batch)} instances, "
              f"one association)  [{cpu_line(cpu0, len(batch))}]")
        # like for like: the receiver stores the pass step's instances afresh too (it keeps no index but its files)
        empty_store(work / "received")
        cpu0 = cpu_snapshot()
        results["pass"], accept_rate = through_gateway("ARCHIVE", batch, 600)
        print(f"through the gateway, rule pass     : {results['pass']:7.1f} instances/s end to end, "
              f"forwarding in a {args.forward} "
              f"(gateway accepted {accept_rate:.1f}/s)  ratio {results['pass'] / results['direct']:.2f}  "
              f"[{cpu_line(cpu0, len(batch))}]")
        if args.protect_count:
            empty_store(work / "received")
            items = batch[: args.protect_count]
            cpu0 = cpu_snapshot()
            results["protect"], accept_rate = through_gateway("RESEARCH", items, 1800)
            print(f"through the gateway, rule protect  : {results['protect']:7.1f} instances/s end to end "
                  f"(profile plain, device {args.device}, receiver strips; gateway accepted {accept_rate:.1f}/s)  "
                  f"[{cpu_line(cpu0, len(items))}]")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
