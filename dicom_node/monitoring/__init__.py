"""Monitoring of the gateway and the receiving node: Prometheus metrics, health, a status page.
The metric definitions and the hook that counts audit records are dicomnet.metrics (shared with the plugin).

    queuestats.py  gauges read from the durable SQLite queue at scrape time
    health.py      readiness checks (listening, queue writable, keys loaded)
    statuspage.py  the read-only HTML status page
    server.py      one HTTP server on metrics_port: GET /metrics, GET /health, GET /
"""
