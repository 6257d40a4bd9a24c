"""The metric definitions (names prefixed miadmark_) and the hook that counts audit records.

Counters follow the audit trail: every audit record a node writes passes through count_audit()
(registered in miadmark.audit.HOOKS, called by AuditLog.write), so a metric and its audit line cannot disagree.

`miadmark gateway` runs two processes (receiving + forwarding child). use_multiprocess() puts
prometheus-client in multiprocess mode (values in mmap files under one folder, summed at scrape
time) before the first metric is made; the forwarding child inherits the folder by environment.
The metrics are made lazily (get()) so that choice can still be made after this module is imported.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from miadmark.audit import HOOKS

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
    protect_seconds: object
    engine_device: object
    registry: object  # None in multiprocess mode (the files are the registry)


_lock = threading.Lock()
_metrics: Metrics | None = None


def multiprocess() -> bool:
    return bool(os.environ.get(ENV))


def use_multiprocess(folder: str | Path) -> bool:
    """Count in shared files under `folder` (emptied: counters start at 0 with the service).
    False when this process already made its metrics in memory (then only its own are served)."""
    global _metrics
    if _metrics is not None and not multiprocess():
        return False
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    from prometheus_client import values
    values.ValueClass = values.get_value_class()  # chosen at import; the environment changed since
    with _lock:
        _metrics = None
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
        protect_seconds=Histogram("miadmark_protect_seconds", "seconds to protect one instance (batch mean)",
                                  ("profile",), buckets=PROTECT_BUCKETS, registry=reg),
        engine_device=Gauge("miadmark_engine_device", "1 for the device the watermark engine runs on",
                            ("device",), registry=reg, multiprocess_mode="max"),
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
