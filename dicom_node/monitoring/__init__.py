"""Monitoring of the gateway and the receiving node: Prometheus metrics, health, a status page.

    metrics.py     the metric definitions (miadmark_*) and the one hook that counts audit records
    queuestats.py  gauges read from the durable SQLite queue at scrape time
    health.py      readiness checks (listening, queue writable, keys loaded)
    statuspage.py  the read-only HTML status page
    server.py      one HTTP server on metrics_port: GET /metrics, GET /health, GET /
"""
