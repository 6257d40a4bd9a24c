"""What an operator reads: an aborted association is one log line, and a decoder that fails prints no
library traceback before the file's one refusal line. Real processes, real sockets."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

from pynetdicom import AE
from pydicom.uid import CTImageStorage
from waiting import free_port, wait_for

from conftest import DICOM_DATA

UNDECODABLE = [DICOM_DATA / "transfer_syntaxes" / "JPEGExtended" / "JPEG-lossy.dcm",
               DICOM_DATA / "transfer_syntaxes" / "JPEG2000Lossless" / "966.dcm"]


def _reset_mid_pdu(port: int) -> None:
    """Associate, start a P-DATA-TF PDU, then reset the connection (RST) before it is complete."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RESEARCH")
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\0" * 10)
    time.sleep(0.3)
    sock.close()


def test_an_aborted_association_is_one_log_line(tmp_path, site_keys):
    keys = site_keys["hospital_paths"][0].parent
    port = free_port()
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {port}
  store: received/
  quarantine: quarantine/
  keys: [{{key: {keys}/research.key.pem, cert: {keys}/research.cert.pem}}]
  trust: [{keys}/hospital.cert.pem]
  plain: store
""")
    log = tmp_path / "receiver.log"
    proc = subprocess.Popen([sys.executable, "-m", "miadmark.cli", "--log-file", str(log), "receive", "--config",
                             str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: log.exists() and "listening" in log.read_text(), timeout=60)
        for _ in range(2):
            _reset_mid_pdu(port)
        assert wait_for(lambda: log.read_text().count("Connection closed before") == 2, timeout=10), log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    aborted = [line for line in text.splitlines() if "Connection closed before the entire PDU" in line]
    assert len(aborted) == 2 and all("(ConnectionResetError: [Errno 104] Connection reset by peer)" in line
                                     for line in aborted), text
    assert "Traceback" not in text and text.count("Connection reset by peer") == 2, text


def test_an_undecodable_file_is_one_stderr_line_without_library_traceback(tmp_path, site_keys):
    (h_key, h_cert), (_, r_cert) = site_keys["hospital_paths"], site_keys["research_paths"]
    res = subprocess.run([sys.executable, "-m", "miadmark.cli", "protect", *map(str, UNDECODABLE), "--out",
                          str(tmp_path / "out"), "--recipient", str(r_cert), "--sign-key", str(h_key),
                          "--sign-cert", str(h_cert), "--profile", "plain"], capture_output=True, text=True,
                         timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 2, res.stderr
    for path, line in zip(UNDECODABLE, lines):
        assert line.startswith(f"{path}: pixel data does not decode (RuntimeError: pylibjpeg: "), line
    assert "Traceback" not in res.stderr
