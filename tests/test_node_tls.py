"""DICOM TLS (issue 14, finding 12): the gateway listens over TLS and forwards to the receiving node over mutually
authenticated TLS; a caller without TLS, or without a client certificate, stores nothing."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.config import load_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


def _cert(name: str, issuer_key, issuer_name, key, *, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _cert("test CA", ca_key, ca_name, ca_key, ca=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{name}.pem").write_bytes(_cert(name, ca_key, ca_name, key).public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return folder


@pytest.fixture
def tls_receiver(tmp_path, pki):
    cfg = tmp_path / "rx.yaml"
    cfg.write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: 0
  store: store/
  quarantine: quarantine/
  allow_calling: [GW]
  tls: {{cert: {pki}/server.pem, key: {pki}/server.key, ca: {pki}/ca.pem, require_client_cert: true}}
""")
    rx = Receiver(load_config(cfg)).start()
    yield rx
    rx.stop()


def stored(rx) -> list[Path]:
    return sorted(Path(rx.rx.store).rglob("*.dcm"))


def test_gateway_forwards_over_mutual_tls(tmp_path, pki, tls_receiver):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""\
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  spool: spool/
  retry: {{base_s: 0.05, max_s: 0.2}}
  tls: {{cert: {pki}/server.pem, key: {pki}/server.key}}
destinations:
  research:
    ae_title: RESEARCH
    host: 127.0.0.1
    port: {tls_receiver.port}
    tls: {{cert: {pki}/client.pem, key: {pki}/client.key, ca: {pki}/ca.pem}}
rules:
  - {{send_to: [research], action: pass}}
""")
    gw = Gateway(load_config(cfg)).start(watch=False)
    try:
        with pytest.raises(ConnectionError):  # the gateway's listener speaks TLS only
            send_files("127.0.0.1", gw.port, CT[:2], called_ae="GW", calling_ae="PACS")
        tls = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        assert send_files("127.0.0.1", gw.port, CT[:2], called_ae="GW", calling_ae="PACS", tls=tls) == [0, 0]
        end = time.monotonic() + 30
        while len(stored(tls_receiver)) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(stored(tls_receiver)) == 2
    finally:
        gw.stop()


def _store_over(rx, tls_args) -> bool:
    ae = AE(ae_title="GW")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="RESEARCH", tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_store(dcmread(CT[2]))
        return getattr(status, "Status", None) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def test_callers_without_tls_or_client_certificate_store_nothing(pki, tls_receiver):
    assert not _store_over(tls_receiver, None)  # plain TCP to a TLS listener
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assert not _store_over(tls_receiver, (no_cert, "localhost"))
    mutual = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    mutual.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    assert _store_over(tls_receiver, (mutual, "localhost"))  # the same call with a client certificate
    assert len(stored(tls_receiver)) == 1


def test_stow_over_https_with_ca_bundle_and_client_certificate(pki):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dicom_node.forwarder import Outgoing
    from dicom_node.transports import send_stow
    from dicomnet.dimse import Unreachable
    from miadmark.config import parse_config

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.load_verify_locations(str(pki / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}/studies"
    try:
        items = [Outgoing(None, CT[0], "1.2.3", "", "")]
        mutual = parse_config(f"destinations:\n  web: {{stow_url: '{url}', verify: {pki}/ca.pem, "
                              f"client_cert: {pki}/client.pem, client_key: {pki}/client.key}}\n").destinations["web"]
        assert [o.ok for o in send_stow(mutual, items)] == [True]
        no_cert = parse_config(f"destinations:\n  web: {{stow_url: '{url}', verify: {pki}/ca.pem}}\n")
        with pytest.raises(Unreachable):
            send_stow(no_cert.destinations["web"], items)
    finally:
        server.shutdown()
