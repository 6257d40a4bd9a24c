"""The backlog line: pending, delivery rate and ETA from the durable queue, in the gateway's log and
in `miadmark queue status`."""

from __future__ import annotations

import json
import logging
import re
import time

from test_ops_metrics import CT, site_yaml
from waiting import free_port, wait_for

from dicom_node.forwarder import Forwarder
from dicom_node.gateway import Gateway
from dicom_node.monitoring.backlog import backlogs, duration
from dicom_node.storescu import send_files
from dicomnet.queue import NewJob, Queue
from miadmark.cli import main
from miadmark.config import load_config


def fill(queue: Queue, n: int) -> list[int]:
    return [queue.add(file=f"objects/{i}.dcm", sop_uid=f"1.2.{i}", sop_class="1.2.840.10008.5.1.4.1.1.2",
                      transfer_syntax="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                      calling_ae="PACS", called_ae="ARCHIVE", jobs=[NewJob("research", "pass", "rule 1")])[0]
            for i in range(n)]


def test_rate_and_eta_from_the_queue(tmp_path):
    queue = Queue(tmp_path / "queue.sqlite")
    ids = fill(queue, 30)
    for job_id in ids[:10]:
        queue.mark_done(job_id)
    b = backlogs(queue, now=time.time() + 10)["research"]  # 10 delivered in the last ~10 s, 20 waiting
    assert b.pending == 20
    assert 0.9 < b.per_s <= 1.0 and 20 <= b.eta_s < 22.5
    assert re.fullmatch(r"backlog research: 20 pending, oldest waiting \d+ s, 1\.0/s delivered, ETA 2[0-2] s",
                        b.line()), b.line()
    assert duration(59) == "59 s" and duration(150) == "2 min 30 s" and duration(7300) == "2 h 01 min"
    stalled = Queue(tmp_path / "q2.sqlite")
    fill(stalled, 3)
    assert backlogs(stalled)["research"].eta_s is None and "no estimate" in backlogs(stalled)["research"].line()


def test_gateway_logs_backlog_and_queue_status_shows_eta(tmp_path, site_keys, caplog, capsys, monkeypatch):
    monkeypatch.setattr(Forwarder, "BACKLOG_LOG_S", 0.2)
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=free_port(), gw_metrics=0, rx_metrics=0)  # rx down
    caplog.set_level(logging.INFO, logger="dicom_node.forward")
    gw = Gateway(load_config(cfg_path)).start()
    try:
        assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
        assert wait_for(lambda: any(r.getMessage().startswith("backlog research: 3 pending")
                                    for r in caplog.records), timeout=20)
    finally:
        gw.stop()
    assert main(["queue", "status", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "rate/ETA" in out and "stalled" in out
    assert main(["queue", "status", "--config", str(cfg_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["pending"] == 3 and row["eta_s"] is None and row["delivered_per_s"] == 0
