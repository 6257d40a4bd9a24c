"""`miadmark queue status --config FILE` and `miadmark queue retry --config FILE [--destination D]`."""

from __future__ import annotations

import json
import sys

from miadmark.config import ConfigError, load_config


def register(sub) -> None:
    p = sub.add_parser("queue", help="the gateway's forwarding queue")
    qsub = p.add_subparsers(dest="queue_command", required=True)
    status = qsub.add_parser("status", help="per destination: pending, done, dead, quarantined, last error")
    status.add_argument("--config", required=True, help="the gateway's site YAML file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=run_status)
    retry = qsub.add_parser("retry", help="re-queue dead-letter instances (after fixing the destination)")
    retry.add_argument("--config", required=True, help="the gateway's site YAML file")
    retry.add_argument("--destination", help="only this destination (default: all)")
    retry.set_defaults(func=run_retry)


def _queue(args):
    from dicomnet.queue import Queue
    cfg = load_config(args.config, check_files=False)
    path = cfg.gateway.spool / "queue.sqlite"
    if not path.exists():
        return None, path
    return Queue(path), path


def run_status(args) -> int:
    try:
        queue, path = _queue(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    rows = queue.status() if queue else []
    if queue:
        from dicom_node.monitoring.backlog import backlogs
        eta = backlogs(queue)
        for r in rows:
            b = eta[r["destination"]]
            r["delivered_per_s"], r["eta_s"] = round(b.per_s, 2), None if b.eta_s is None else round(b.eta_s, 1)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{path}: empty (nothing received yet)")
        return 0
    from dicom_node.monitoring.backlog import duration
    print(f"{'destination':<16} {'pending':>8} {'done':>8} {'dead':>6} {'quarant.':>8}  oldest/next  "
          f"{'rate/ETA':<16}  last error")
    for r in rows:
        timing = (f"{r['oldest_pending_s']:.0f}s/{r['next_try_in_s']:.0f}s"
                  if r["oldest_pending_s"] is not None else "-")
        eta = "-" if not r["pending"] else (f"{r['delivered_per_s']:.1f}/s, {duration(r['eta_s'])}"
                                            if r["eta_s"] is not None else "stalled")
        print(f"{r['destination']:<16} {r['pending']:>8} {r['done']:>8} {r['dead']:>6} {r['quarantined']:>8}"
              f"  {timing:<11}  {eta:<16}  {r['last_error'] or ''}")
    return 0


def run_retry(args) -> int:
    try:
        queue, path = _queue(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    n = queue.retry_dead(args.destination) if queue else 0
    print(f"{n} dead-letter instance(s) re-queued (a running gateway picks them up)")
    return 0
