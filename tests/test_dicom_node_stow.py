"""STOW-RS forwarding (one multipart POST per batch) and TCP_NODELAY on association sockets."""

from __future__ import annotations

import email.parser
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from dicom_node.gateway import Gateway
from dicom_node.storescu import send_files
from dicomnet.dimse import set_nodelay
from miadmark.config import load_config

CT = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314"
             / "data").glob("*.dcm"))


class StowServer:
    def __init__(self, fail_first: int = 0):
        self.posts: list[list[bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                msg = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                parts = [p.get_payload(decode=True) for p in msg.get_payload()]
                assert all(p.get_content_type() == "application/dicom" for p in msg.get_payload())
                outer.posts.append(parts)
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


@pytest.mark.parametrize("fail_first", [0, 2])
def test_stow_destination_gets_one_post_per_batch(tmp_path, fail_first):
    server = StowServer(fail_first=fail_first)
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""\
gateway: {{ae_title: GW, bind: 127.0.0.1, port: 0, spool: spool/, retry: {{base_s: 0.05, max_s: 0.2}}}}
destinations:
  cloud: {{stow_url: "http://127.0.0.1:{server.port}/dicom-web/studies", headers: {{Authorization: "Bearer t"}}}}
rules:
  - when: {{called_ae: CLOUD}}
    send_to: [cloud]
    action: pass
""")
    gw = Gateway(load_config(cfg)).start(watch=False)
    try:
        assert send_files("127.0.0.1", gw.port, CT[:4], called_ae="CLOUD", calling_ae="PACS") == [0] * 4
        end = time.monotonic() + 20
        while gw.queue.counts()["cloud"]["done"] < 4 and time.monotonic() < end:
            time.sleep(0.05)
        assert gw.queue.counts()["cloud"]["done"] == 4
        parts = [p for post in server.posts for p in post]
        assert len(parts) == 4  # one POST per batch of what is due (instances arriving one by one: several)
        sent = {pydicom.dcmread(__import__("io").BytesIO(p)).SOPInstanceUID for p in parts}
        assert sent == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in CT[:4]}
    finally:
        gw.stop()
        server.stop()


def test_set_nodelay_on_the_association_socket():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    try:
        event = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=client))))
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_nodelay(event)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.close()
        listener.close()


def test_quick_acks_before_every_read_of_the_association_socket():
    """A peer that leaves Nagle on answers a C-STORE in two writes and holds the second until our ACK:
    the ACK must not be delayed (TCP_QUICKACK set again before each read, Linux drops it on its own)."""
    from dicomnet.dimse import QUICKACK, ack_at_once
    if QUICKACK is None:
        pytest.skip("TCP_QUICKACK is Linux only")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        wrapped = SimpleNamespace(socket=client, recv=lambda n: client.recv(n))
        ack_at_once(wrapped)
        for _ in range(2):
            client.setsockopt(socket.IPPROTO_TCP, QUICKACK, 0)
            server.sendall(b"abc")
            assert wrapped.recv(3) == b"abc"
            assert client.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 1
    finally:
        for s in (server, client, listener):
            s.close()


def test_nodelay_set_on_both_ends_of_a_real_association():
    from pynetdicom import evt

    from dicomnet.dimse import NODELAY_HANDLERS, scu_ae
    from dicomnet.listener import storage_scp_ae
    seen = []

    def accepted(event):
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = storage_scp_ae("SCP").start_server(("127.0.0.1", 0), block=False,
                                                evt_handlers=[*NODELAY_HANDLERS, (evt.EVT_ACCEPTED, accepted)])
    try:
        assoc = scu_ae("SCU", [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2")]).associate(
            "127.0.0.1", server.server_address[1], evt_handlers=NODELAY_HANDLERS)
        assert assoc.is_established
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assoc.release()
        assert seen and seen[0] != 0
    finally:
        server.shutdown()
