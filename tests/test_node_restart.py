"""Restart after kill -9 (issue 14, finding 7): the forwarder records each delivery as its C-STORE is
answered, not once per batch, so a gateway killed mid-batch re-sends only the instance in flight.
Over a real association to a real storage SCP; the timing of the whole restart is in benchmarks/restart.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom import evt

from dicom_node.forwarding import Forwarding
from dicom_node.gateway import Gateway
from dicom_node.storescu import send_files
from dicomnet.listener import start_listener, storage_scp_ae
from miadmark.config import load_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:6]


def test_each_delivery_is_recorded_before_the_next_is_sent(tmp_path):
    gateway = {}
    done_seen: list[int] = []  # jobs marked done when the receiver got the n-th instance

    def on_store(event):
        done_seen.append(gateway["gw"].queue.counts().get("archive", {}).get("done", 0))
        return 0x0000

    scp = start_listener(storage_scp_ae("ARCHIVE"), "127.0.0.1", 0, [(evt.EVT_C_STORE, on_store)])
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(f"""\
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  spool: spool/
  device: cpu
destinations:
  archive: {{ae_title: ARCHIVE, host: 127.0.0.1, port: {scp.server_address[1]}}}
rules:
  - {{send_to: [archive], action: pass}}
""")
    config = load_config(cfg_path)
    gw = gateway["gw"] = Gateway(config, forward="none").start(watch=False)  # queue all first: one batch
    forwarding = None
    try:
        assert send_files("127.0.0.1", gw.port, CT, called_ae="GW", calling_ae="MODALITY") == [0] * len(CT)
        forwarding = Forwarding(config).start()
        end = time.monotonic() + 30
        while len(done_seen) < len(CT) and time.monotonic() < end:
            time.sleep(0.05)
        assert done_seen == list(range(len(CT)))  # one batch, and each answer recorded before the next send
        end = time.monotonic() + 10
        while gw.queue.counts()["archive"]["done"] < len(CT) and time.monotonic() < end:
            time.sleep(0.05)
        assert gw.queue.counts()["archive"]["done"] == len(CT)
    finally:
        if forwarding is not None:
            forwarding.stop()
        gw.stop()
        scp.shutdown()
