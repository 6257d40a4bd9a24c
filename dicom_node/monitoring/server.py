"""One HTTP server per node on `metrics_port`: GET /metrics (Prometheus text), GET /health
(200 ready / 503 not, JSON), GET / (the status page). Loopback unless metrics_bind says otherwise."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dicomnet import metrics

from . import health, statuspage
from .queuestats import QueueCollector

log = logging.getLogger("dicom_node.monitoring")


class _Scrape:
    """What one scrape reads: this process's metrics (or every process's files) + the queue."""

    def __init__(self, queue_path: Path | None):
        self.queue = QueueCollector(queue_path) if queue_path is not None else None

    def collect(self):
        if metrics.multiprocess():
            from prometheus_client.multiprocess import MultiProcessCollector
            metrics.forget_dead_processes()  # e.g. a finished release's workers
            yield from MultiProcessCollector(None).collect()
        else:
            yield from metrics.get().registry.collect()
        if self.queue is not None:
            yield from self.queue.collect()


class MonitoringServer:
    def __init__(self, *, title: str, bind: str, port: int, checks, queue_path: Path | None, audit_path: Path | None):
        self.title, self.checks = title, checks
        self.queue_path, self.audit_path = queue_path, audit_path
        self.scrape = _Scrape(queue_path)
        metrics.get()  # every metric exists (at 0) from the start
        try:
            self.httpd = ThreadingHTTPServer((bind, port), self._handler())
        except OSError as exc:
            raise OSError(exc.errno, f"metrics port {bind}:{port}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        self.bind, self.port = bind, self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="monitoring-http", daemon=True)

    def start(self) -> "MonitoringServer":
        self._thread.start()
        log.info("metrics, health and status page on http://%s:%d/", self.bind, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def health(self) -> tuple[bool, dict]:
        return health.summary(self.checks())

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(server.scrape))
                elif path == "/health":
                    ok, body = server.health()
                    self._reply(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif path in ("/", "/status"):
                    ok, body = server.health()
                    page = statuspage.render(title=server.title, ready=ok, checks=body["checks"],
                                             queue_path=server.queue_path, audit_path=server.audit_path)
                    self._reply(200, "text/html; charset=utf-8", page.encode())
                else:
                    self._reply(404, "text/plain", b"not found: try /, /metrics or /health\n")

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes every few seconds: debug only
                log.debug("%s %s", self.address_string(), fmt % args)

        return Handler


def monitor_gateway(gateway) -> MonitoringServer | None:
    """The gateway's server, if gateway.metrics_port is set; counts in shared files (gateway.metrics_dir)
    when the forwarding runs in a child process (call before the child starts) or when `miadmark gateway`
    chose them already; a release run with this configuration counts there too."""
    cfg = gateway.config.gateway
    if cfg.metrics_port is None:
        return None
    if gateway.forward == "process" and not metrics.counting_in(cfg.metrics_dir) \
            and not metrics.use_multiprocess(cfg.metrics_dir):
        log.warning("metrics: this process counted before multiprocess mode was set; the forwarding "
                    "process's counts are not served")
    return MonitoringServer(title=f"MIAD-MARK gateway {cfg.ae_title}", bind=cfg.metrics_bind, port=cfg.metrics_port,
                            checks=health.GatewayHealth(gateway), queue_path=gateway.spool.queue_path,
                            audit_path=cfg.audit).start()


def monitor_receiver(receiver) -> MonitoringServer | None:
    rx = receiver.rx
    if rx.metrics_port is None:
        return None
    return MonitoringServer(title=f"MIAD-MARK receiving node {rx.ae_title}", bind=rx.metrics_bind,
                            port=rx.metrics_port, checks=health.ReceiverHealth(receiver), queue_path=None,
                            audit_path=rx.audit).start()
