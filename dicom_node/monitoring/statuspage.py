"""The read-only status page: queue by state, recent deliveries and failures, per-destination health.

Built from the durable queue and the tail of the audit log, which hold UIDs, AE titles and rule
labels, never patient names. Plain HTML (no script), refreshed by the browser every REFRESH_S.
"""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path

from dicomnet.queue import STATES
from .queuestats import queue_snapshot

REFRESH_S = 5
TAIL_BYTES = 256 * 1024
RECENT = 20
DELIVERED = ("sent", "stored")
FAILED = ("send_failed", "dead_letter", "quarantined", "blocked", "refused")


def audit_tail(path: Path | None, limit_bytes: int = TAIL_BYTES) -> list[dict]:
    """The last records of a JSON-lines audit log (reads at most limit_bytes from its end)."""
    if path is None or not Path(path).exists():
        return []
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - limit_bytes))
        lines = fh.read().splitlines()
    if size > limit_bytes:
        lines = lines[1:]  # the first one is cut
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def destination_health(row: dict, retrying: int) -> str:
    if row.get("dead"):
        return "dead letter"
    if retrying:
        return "retrying"
    if row.get("pending"):
        return "backlog"
    return "ok"


def _cell(value, key: str = "") -> str:
    attr = f' data-key="{escape(key)}"' if key else ""
    return f"<td{attr}>{escape('' if value is None else str(value))}</td>"


def _events_table(records: list[dict], table_id: str, with_reason: bool) -> str:
    head = "<tr><th>time</th><th>event</th><th>SOP Instance UID</th><th>destination</th>"
    head += "<th>reason</th></tr>" if with_reason else "</tr>"
    rows = []
    for r in reversed(records[-RECENT:]):
        cells = [_cell(r.get("time")), _cell(r.get("event")), _cell(r.get("sop_instance_uid"), "uid"),
                 _cell(r.get("destination") or r.get("calling_ae"))]
        if with_reason:
            cells.append(_cell(r.get("error") or r.get("reason")))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{table_id}">{head}{"".join(rows)}</table>' if rows else f'<p id="{table_id}">none</p>'


def render(*, title: str, ready: bool, checks: dict, queue_path: Path | None, audit_path: Path | None) -> str:
    rows, retries = queue_snapshot(queue_path) if queue_path is not None else ([], {})
    records = audit_tail(audit_path)
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p>ready: <b id="ready">{"yes" if ready else "no"}</b> &middot; '
             + " &middot; ".join(f'{escape(k)}: <span data-check="{escape(k)}">{"ok" if c["ok"] else "FAILING"}'
                                 f"</span> ({escape(c['detail'])})" for k, c in checks.items())
             + f" &middot; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>"]
    if queue_path is not None:
        parts.append("<h2>Queue by destination</h2>")
        head = "".join(f"<th>{s}</th>" for s in ("destination", "health", *STATES, "retrying",
                                                 "oldest pending (s)", "last error"))
        body = []
        for r in rows:
            n_retry = retries.get(r["destination"], (0, 0))[0]
            body.append(f'<tr data-destination="{escape(r["destination"])}">' + _cell(r["destination"])
                        + _cell(destination_health(r, n_retry), "health")
                        + "".join(_cell(r.get(s, 0), s) for s in STATES) + _cell(n_retry, "retrying")
                        + _cell(r["oldest_pending_s"], "oldest") + _cell(r["last_error"], "last_error") + "</tr>")
        parts.append(f'<table id="queue"><tr>{head}</tr>{"".join(body)}</table>' if body
                     else '<p id="queue">empty (nothing received yet)</p>')
    parts.append("<h2>Recent deliveries</h2>")
    parts.append(_events_table([r for r in records if r.get("event") in DELIVERED], "delivered", False))
    parts.append("<h2>Recent failures</h2>")
    parts.append(_events_table([r for r in records if r.get("event") in FAILED], "failures", True))
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:left}th{background:#eee}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">'
            f"<title>{escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}"
            '<p><a href="metrics">metrics</a> &middot; <a href="health">health</a></p></body></html>')
