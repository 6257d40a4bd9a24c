"""A CT series from a modality to a research receiving node through the gateway, as a hospital runs it.

    .venv/bin/python benchmarks/ct_series.py [--slices 96] [--profile NAME] [--json out.json]

Three processes on loopback, started as services: `miadmark receive` (the research node: strips and stores),
`miadmark gateway` (receiving process + forwarding child; the rule protects with no profile line, as in the
README's config: the default `auto`, the generator on a CPU; or with --profile) and dcmtk `storescu` as the
modality, sending the slices of ../shared/data/dicom/ct_chest_lidc0314 over one association. Reports the
time until the research node stored the last slice, and what an operator would look for: protections per
instance (the gateway's miadmark_protect_seconds_count), failed sends and retries (audit), duplicates at the
research node (a resend), and timeout / retry lines in either log. Judge the time on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gateway import free_port, wait_port  # noqa: E402 - benchmarks/gateway.py: services on loopback

CT = REPO.parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"
TROUBLE = ("timeout", "timed out", "will retry", "unreachable", "association lost", "Traceback")


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples on GET /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def audit_events(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            event = json.loads(line).get("event", "")
            counts[event] = counts.get(event, 0) + 1
    return counts


class Site:
    """`miadmark receive` + `miadmark gateway` in a work folder (services, each with its own log)."""

    def __init__(self, work: Path, *, profile: str | None, device: str = "cpu", extra_gateway: str = ""):
        from miadmark.keys import new_identity
        self.work = work
        new_identity("hospital", work / "keys")
        new_identity("research", work / "keys")
        self.gw_port, self.rx_port, self.metrics_port = free_port(), free_port(), free_port()
        profile_line = f"    profile: {profile}\n" if profile else ""
        (work / "site.yaml").write_text(f"""\
identity: {{key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}}
gateway:
  ae_title: MIADMARK
  bind: 127.0.0.1
  port: {self.gw_port}
  allow_calling: [PACS]
  spool: spool/
  audit: gateway-audit.jsonl
  device: {device}
  metrics_port: {self.metrics_port}
{extra_gateway}destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {self.rx_port}}}
rules:
  - when: {{called_ae: RESEARCH}}
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
{profile_line}  - when: {{called_ae: ARCHIVE}}
    send_to: [research]
    action: pass
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {self.rx_port}
  store: received/
  quarantine: rx-quarantine/
  audit: receiver-audit.jsonl
  allow_calling: [MIADMARK]
  plain: store
  keys: [{{key: keys/research.key.pem, cert: keys/research.cert.pem}}]
  trust: [keys/hospital.cert.pem]
""")
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> "Site":
        for name, port in (("receive", self.rx_port), ("gateway", self.gw_port)):
            log = open(self.work / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "miadmark.cli", name, "--config", "site.yaml"],
                                                cwd=self.work, stdout=log, stderr=subprocess.STDOUT)
            wait_port(port, self.procs[name], timeout=120)
        return self

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def stored(self) -> int:
        store = self.work / "received"
        return sum(1 for _ in store.rglob("*.dcm")) if store.exists() else 0

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")


def storescu(port: int, files: list[Path], called: str = "RESEARCH") -> subprocess.CompletedProcess:
    """dcmtk storescu as the modality: every file over one association."""
    return subprocess.run(["storescu", "-aet", "PACS", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=600)


def run(slices: int, profile: str | None, device: str, timeout_s: float, keep: bool = False) -> dict:
    files = sorted(CT.glob("*.dcm"))[:slices]
    work = Path(tempfile.mkdtemp(prefix="miadmark-ct-series-"))
    site = Site(work, profile=profile, device=device)
    try:
        site.start()
        began = time.monotonic()
        sent = storescu(site.gw_port, files)
        acknowledged = time.monotonic() - began
        while site.stored() < len(files) and time.monotonic() - began < timeout_s:
            time.sleep(0.2)
        seconds = time.monotonic() - began
        time.sleep(1.0)  # the gateway records a delivery just after the node's answer
        gw_events, rx_events = audit_events(work / "gateway-audit.jsonl"), audit_events(work / "receiver-audit.jsonl")
        protections = metric(site.metrics_port, "miadmark_protect_seconds_count")
        logs = {name: site.log(name) for name in site.procs}
        from miadmark.machine import describe
        return {
            "command": "python benchmarks/ct_series.py " + " ".join(sys.argv[1:]),
            "machine": describe(), "slices": len(files), "profile": profile or "(default)", "device": device,
            "storescu_returncode": sent.returncode, "acknowledged_s": round(acknowledged, 1),
            "seconds": round(seconds, 1), "stored": site.stored(), "slices_per_s": round(site.stored() / seconds, 2),
            "protections": int(protections), "sent": gw_events.get("sent", 0),
            "send_failed": gw_events.get("send_failed", 0), "dead_letter": gw_events.get("dead_letter", 0),
            "receiver_duplicates": rx_events.get("duplicate", 0),
            "receiver_quarantined": rx_events.get("quarantined", 0) + rx_events.get("conflict", 0),
            "trouble_lines": {name: [line for line in text.splitlines() if any(t in line for t in TROUBLE)][:20]
                              for name, text in logs.items()},
            "work": str(work) if keep else None,
        }
    finally:
        site.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=96)
    ap.add_argument("--profile", default="", help="the rule's profile (default: no profile line)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=1800, help="give up waiting after this many seconds")
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, spool, audit)")
    args = ap.parse_args(argv)
    result = run(args.slices, args.profile or None, args.device, args.timeout, args.keep)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["stored"] == result["slices"] else 1


if __name__ == "__main__":
    sys.exit(main())
