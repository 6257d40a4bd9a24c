"""Monitoring of the Orthanc plugin: GET /miadmark/metrics (Prometheus text, miadmark_* names) and
GET /miadmark/status-page (a read-only HTML page), from what the plugin already reports in
/miadmark/status (configuration, receiver counts, export jobs). Registered by service.install()."""

from __future__ import annotations

import time
from html import escape

from dicomnet import metrics

from .sdk import orthanc

_PLUGIN = []  # the one Plugin of this Orthanc, set by register()


def _plugin():
    return _PLUGIN[0]


class PluginCollector:
    """prometheus-client collector over Plugin.status() (read at scrape time, nothing kept)."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        status = _plugin().status()
        loaded = GaugeMetricFamily("miadmark_plugin_config_loaded", "1 when the routing configuration is loaded")
        loaded.add_metric((), 1 if status["Loaded"] else 0)
        received = CounterMetricFamily("miadmark_plugin_received_instances", "instances seen by the plugin's receiver",
                                       labels=("outcome",))
        for outcome, n in ((status.get("Receiver") or {}).get("Counts") or {}).items():
            received.add_metric((outcome,), n)
        queue = GaugeMetricFamily("miadmark_plugin_export_queue", "export rows in the durable outbox",
                                  labels=("destination", "state"))
        for entry in status["Queue"]:
            for state in ("pending", "retrying", "done", "dead", "quarantined"):
                queue.add_metric((str(entry["destination"]), state), entry.get(state, 0))
        running = GaugeMetricFamily("miadmark_plugin_jobs_running", "export jobs running")
        running.add_metric((), len(status["Running"]))
        yield from (loaded, received, queue, running)


class _Scrape:
    def collect(self):
        yield from metrics.get().registry.collect()  # what this process counted (audit hook)
        yield from PluginCollector().collect()


def _metrics_route(output, uri, **request):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    output.AnswerBuffer(generate_latest(_Scrape()), CONTENT_TYPE_LATEST)


def _rows(items: list[dict], keys: list[str], table_id: str) -> str:
    if not items:
        return f'<p id="{table_id}">none</p>'
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(i.get(k, '')))}</td>" for k in keys) + "</tr>" for i in items)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def render(status: dict) -> str:
    counts = (status.get("Receiver") or {}).get("Counts") or {}
    dests = [{"Name": n, **d} for n, d in status["Destinations"].items()]
    parts = ["<h1>MIAD-MARK in Orthanc</h1>",
             f'<p>configuration: <b id="loaded">{"loaded" if status["Loaded"] else "NOT loaded"}</b> '
             f"({escape(str(status['Config']))}) {escape(status['Error'] or '')} &middot; {status['Rules']} rule(s)"
             f" &middot; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>",
             "<h2>Destinations</h2>", _rows(dests, ["Name", "Kind", "Target"], "destinations"),
             "<h2>Receiver</h2>", _rows([counts] if counts else [], sorted(counts), "receiver"),
             f'<h2>Export outbox</h2><p>pending: <span id="queue">{status["Pending"]}</span> &middot; retrying: '
             f'<span id="retrying">{status["Retrying"]}</span> &middot; dead letters: <span id="dead">'
             f'{status["Dead"]}</span></p>',
             _rows(status["Queue"], ["destination", "pending", "retrying", "done", "dead", "quarantined"],
                   "queue-table"),
             _rows(status["Running"], ["ID", "Description", "Progress"], "running"),
             "<h2>Recent jobs</h2>", _rows(status["Recent"][::-1], ["ID", "State", "Description"], "recent"),
             "<h2>Recent failures</h2>",
             _rows(status["Failed"][::-1], ["ID", "Description", "FailedInstancesCount", "ErrorDescription"],
                   "failures")]
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:left}th{background:#eee}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">'
            f"<title>MIAD-MARK in Orthanc</title><style>{style}</style></head><body>{''.join(parts)}"
            '<p><a href="metrics">metrics</a> &middot; <a href="status">status (JSON)</a></p></body></html>')


def _page_route(output, uri, **request):
    output.AnswerBuffer(render(_plugin().status()).encode(), "text/html; charset=utf-8")


def _get_only(fn):
    def handler(output, uri, **request):
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        try:
            fn(output, uri, **request)
        except Exception as exc:  # noqa: BLE001 - never let an exception reach Orthanc's HTTP thread
            body = f"MIAD-MARK monitoring: {type(exc).__name__}: {exc}"
            output.SendHttpStatus(500, body, len(body))
    return handler


def register(plugin) -> None:
    _PLUGIN[:] = [plugin]
    orthanc.RegisterRestCallback("/miadmark/metrics", _get_only(_metrics_route))
    orthanc.RegisterRestCallback("/miadmark/status-page", _get_only(_page_route))
