"""The backlog of a destination in one line: how many wait, how fast they go, when it will be done.

The rate is what was delivered in the last WINDOW_S, over the time since the first of those
deliveries, read from the durable queue: the gateway's log and `miadmark queue status` agree."""

from __future__ import annotations

import time
from dataclasses import dataclass

WINDOW_S = 300.0


@dataclass(frozen=True)
class Backlog:
    destination: str
    pending: int
    oldest_s: float | None
    per_s: float  # delivered per second over the last WINDOW_S
    eta_s: float | None  # None: nothing delivered lately (no estimate)

    def line(self) -> str:
        eta = ("no estimate (nothing delivered in the last 5 min)" if self.eta_s is None
               else f"ETA {duration(self.eta_s)}")
        oldest = f", oldest waiting {duration(self.oldest_s)}" if self.oldest_s is not None else ""
        return f"backlog {self.destination}: {self.pending} pending{oldest}, {self.per_s:.1f}/s delivered, {eta}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def backlogs(queue, now: float | None = None) -> dict[str, Backlog]:
    """Per destination of the queue (any state), its backlog now."""
    now = time.time() if now is None else now
    done = queue.done_since(now - WINDOW_S)
    out = {}
    for row in queue.status():
        dest = row["destination"]
        n, first = done.get(dest, (0, now))
        rate = n / max(now - first, 1.0)  # over the window, or since deliveries (re)started in it
        pending = row["pending"]
        eta = pending / rate if rate > 0 else (0.0 if pending == 0 else None)
        out[dest] = Backlog(dest, pending, row["oldest_pending_s"], rate, eta)
    return out
