"""The metric definitions (names prefixed miadmark_) and the hook that counts audit records.

Counters follow the audit trail: every audit record a node writes passes through count_audit()
(registered in miadmark.audit.HOOKS, called by AuditLog.write), so a metric and its audit line cannot disagree.

`miadmark gateway` runs two processes (receiving + forwarding child). use_multiprocess() puts
prometheus-client in multiprocess mode (values in mmap files under one folder, summed at scrape
time) before the first metric is made; the forwarding child inherits the folder by environment.
A release run with the gateway's configuration joins the same folder (join_multiprocess), so its
deliveries show on the gateway's /metrics under the same names and labels.
The metrics are made lazily (get()) so that choice can still be made after this module is imported.

What a process that has exited leaves behind: its counters and histograms still count (summed over every
file: a finished release's deliveries stay delivered); the one gauge, engine_device, is `livemax`, and a
scrape first drops the live-gauge files of processes that are gone (forget_dead_processes), so it shows
the devices of running engines only.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from miadmark.audit import HOOKS

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"
PROTECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True)
class Metrics:
    received: object
    blocked: object
    protected: object
    sent: object
    failed: object
    quarantined: object
    stripped: object
    rejected: object
    protect_seconds: object
    engine_device: object
    registry: object  # None in multiprocess mode (the files are the registry)


_lock = threading.Lock()
_metrics: Metrics | None = None


def multiprocess() -> bool:
    return bool(os.environ.get(ENV))


def counting_in(folder: str | Path) -> bool:
    """Whether this process counts in the shared files under `folder`."""
    return multiprocess() and Path(os.environ[ENV]) == Path(folder)


def use_multiprocess(folder: str | Path) -> bool:
    """Count in shared files under `folder` (emptied: counters start at 0 with the service).
    False when this process already made its metrics in memory (then only its own are served)."""
    return _count_in(Path(folder), fresh=True)


def join_multiprocess(folder: str | Path) -> bool:
    """Count into the shared files of a service that runs elsewhere (a release counting into its site's
    gateway), leaving what is there. False (and counting in memory) when that cannot be done."""
    try:
        return _count_in(Path(folder), fresh=False)
    except OSError as exc:
        log.warning("metrics folder %s not usable (%s): this process's counts are not served",
                    folder, exc.strerror or type(exc).__name__)
        return False


def _count_in(folder: Path, *, fresh: bool) -> bool:
    global _metrics
    if _metrics is not None and not multiprocess():
        return False
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(13, "not writable", str(folder))
    os.environ[ENV] = str(folder)
    from prometheus_client import values
    values.ValueClass = values.get_value_class()  # chosen at import; the environment changed since
    with _lock:
        _metrics = None
    return True


def forget_dead_processes() -> None:
    """Drop the live-gauge files of processes that have exited (multiprocess mode), before a scrape."""
    from prometheus_client.multiprocess import mark_process_dead

    folder = os.environ.get(ENV)
    for path in Path(folder).glob("gauge_live*_*.db") if folder else ():
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def get() -> Metrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _make()
        return _metrics


def _make() -> Metrics:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    reg = CollectorRegistry() if not multiprocess() else None  # multiprocess: the files are the registry
    dp = ("destination", "profile")
    return Metrics(
        received=Counter("miadmark_instances_received", "instances accepted (gateway: queued; receiver: stored)",
                         ("node",), registry=reg),
        blocked=Counter("miadmark_instances_blocked", "instances refused by the rules or unreadable",
                        ("destination",), registry=reg),
        protected=Counter("miadmark_instances_protected", "instances delivered watermarked", dp, registry=reg),
        sent=Counter("miadmark_instances_sent", "instances delivered (protected or passed)",
                     ("destination", "profile", "action"), registry=reg),
        failed=Counter("miadmark_instances_failed", "instances given up after the last retry (dead letter)", dp,
                       registry=reg),
        quarantined=Counter("miadmark_instances_quarantined", "instances quarantined, never sent", dp,
                            registry=reg),
        stripped=Counter("miadmark_instances_stripped", "protected instances restored by the receiving node",
                         registry=reg),
        rejected=Counter("miadmark_associations_rejected", "association requests rejected (calling AE not allowed...)",
                         ("node",), registry=reg),
        protect_seconds=Histogram("miadmark_protect_seconds", "seconds to protect one instance (batch mean)",
                                  ("profile",), buckets=PROTECT_BUCKETS, registry=reg),
        engine_device=Gauge("miadmark_engine_device", "1 for the device the watermark engine runs on",
                            ("device",), registry=reg, multiprocess_mode="livemax"),
        registry=reg,
    )


def count_audit(event: str, fields: dict) -> None:
    """The one hook: an audit record becomes counts. Unknown events are not counted. Never raises: a
    metrics fault must not fail a delivery."""
    try:
        _count(event, fields)
    except Exception:  # noqa: BLE001
        pass


def _count(event: str, fields: dict) -> None:
    m = get()
    dest = str(fields.get("destination") or "")
    profile = str(fields.get("profile") or "")
    if event == "received":
        m.received.labels("gateway").inc()
    elif event == "stored":
        m.received.labels("receiver").inc()
        if fields.get("stripped"):
            m.stripped.inc()
    elif event in ("blocked", "refused"):
        m.blocked.labels(dest).inc()
    elif event == "sent":
        m.sent.labels(dest, profile, str(fields.get("action") or "")).inc()
        if fields.get("action") == "protect" and "note" not in fields:  # a lesion source goes unchanged
            m.protected.labels(dest, profile).inc()
    elif event == "dead_letter":
        m.failed.labels(dest, profile).inc()
    elif event == "quarantined":
        m.quarantined.labels(dest, profile).inc()
    elif event == "association_rejected":
        m.rejected.labels(str(fields.get("node") or "")).inc()


def observe_protect(profile: str | None, seconds: float, count: int, device: str | None = None) -> None:
    """A batch of `count` instances took `seconds` to protect."""
    m = get()
    if count > 0:
        for _ in range(count):
            m.protect_seconds.labels(profile or "").observe(seconds / count)
    if device and count > 0:  # the engine exists now: "auto" resolves without side effects
        from miadmark.engine import resolve_device
        m.engine_device.labels(str(resolve_device(device))).set(1)


if count_audit not in HOOKS:  # every AuditLog of this process counts, gateway, receiver and plugin alike
    HOOKS.append(count_audit)
