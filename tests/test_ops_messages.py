"""Messages a new user tripped on: the retry wait that is logged is the one kept, a refused
connection says so, a port in use is named (no traceback), receipts are worded plainly."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time

from test_ops_metrics import CT, site_yaml
from waiting import free_port, wait_for

from dicom_node.gateway import Gateway
from dicom_node.storescu import send_files
from miadmark.config import load_config


class Acceptor:
    """A TCP port that accepts and closes at once (a destination whose DICOM service is broken),
    recording when each connection attempt came."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.times: list[float] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.times.append(time.time())
            conn.close()

    def close(self):
        self.sock.close()


def test_logged_next_try_is_when_the_next_try_comes(tmp_path, site_keys, caplog):
    dest = Acceptor()
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=dest.port, gw_metrics=0, rx_metrics=0)
    text = cfg_path.read_text().replace("retry: {base_s: 0.1, max_s: 0.5, max_attempts: 100}",
                                        "retry: {base_s: 0.4, max_s: 1.6, max_attempts: 100}")
    cfg_path.write_text(text.replace("research: {ae_title", "research: {associations: 2, ae_title"))
    caplog.set_level(logging.WARNING, logger="dicom_node.forward")
    gw = Gateway(load_config(cfg_path)).start()
    try:
        assert send_files("127.0.0.1", gw.port, CT[:4], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 4
        assert wait_for(lambda: len(dest.times) >= 12, timeout=30)  # association + probe per try
    finally:
        gw.stop()
        dest.close()
    waits = [(r.created, float(re.search(r"next try in ([0-9.]+) s", r.getMessage()).group(1)))
             for r in caplog.records if "unreachable" in r.getMessage()]
    # two workers failing together log twice; the later line (longer wait) is the one that holds
    checked = [w for w, later in zip(waits, waits[1:]) if later[0] - w[0] > 0.2]
    assert len(checked) >= 3
    for logged_at, delay in checked:
        # the next connection attempt after the line (one the other worker had under way is not one)
        nxt = min(t for t in dest.times if t > logged_at + 0.05)
        assert abs((nxt - logged_at) - delay) < 0.35, (delay, nxt - logged_at)


def test_refused_connection_is_called_so(tmp_path, site_keys):
    closed = free_port()  # nothing listens there
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=closed, gw_metrics=0, rx_metrics=0)
    gw = Gateway(load_config(cfg_path)).start()
    try:
        assert send_files("127.0.0.1", gw.port, CT[:1], called_ae="ARCHIVE", calling_ae="PACS") == [0]
        assert wait_for(lambda: (gw.queue.status() or [{}])[0].get("last_error"), timeout=20)
        error = gw.queue.status()[0]["last_error"]
        assert error == f"association to RESEARCH@127.0.0.1:{closed} could not connect: connection refused"
    finally:
        gw.stop()


def test_port_in_use_is_named_without_traceback(tmp_path, site_keys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg_path = site_yaml(tmp_path, site_keys, gw_port=port, rx_port=free_port(), gw_metrics=0, rx_metrics=0)
        for command in ("gateway", "receive"):
            text = cfg_path.read_text()
            if command == "receive":
                text = re.sub(r"(receiver:\n(?:.*\n)*?  port: )\d+", rf"\g<1>{port}", text)
                cfg_path.write_text(text)
            res = subprocess.run([sys.executable, "-m", "miadmark.cli", command, "--config", str(cfg_path)],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert res.returncode != 0
            assert f"127.0.0.1:{port}" in res.stderr and "Address already in use" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr, res.stderr


def test_receipt_line_says_what_happened(tmp_path, site_keys, caplog):
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0)
    caplog.set_level(logging.INFO, logger="dicom_node.gateway")
    gw = Gateway(load_config(cfg_path), forward="none").start()
    try:
        assert send_files("127.0.0.1", gw.port, CT[:1], called_ae="NOWHERE", calling_ae="PACS") == [0x0124]
        assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
        assert wait_for(lambda: sum("offered" in r.getMessage() for r in caplog.records) == 2, timeout=10)
    finally:
        gw.stop()
    lines = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "offered" in r.getMessage()]
    assert lines == ["1 instance offered: 1 refused by the rules", "3 instances offered: 3 queued"]
