"""docs/conformance.md is true: each of its tables is read here and each row exercised over real
associations with the real gateway and receiving node (pynetdicom as the peer), so the statement
cannot drift from the code."""

from __future__ import annotations

import io
import re
import ssl
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, PYNETDICOM_IMPLEMENTATION_UID, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from dicomnet.tls import client_context
from miadmark.audit import read_audit
from miadmark.config import GatewayConfig, ReceiverConfig, load_config
from miadmark.dicomio import dataset_to_bytes, read_dicom, write_dicom_atomic
from miadmark.protect import protect
from test_node_tls import pki, tls_receiver  # noqa: F401 - the TLS fixtures (a CA, a TLS receiver)
from waiting import wait_for

from conftest import DICOM_DATA

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


def tables() -> dict[str, list[dict[str, str]]]:
    """Every markdown table of the statement under the heading it follows: heading -> rows (column -> cell)."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.setdefault(heading, []).append(dict(zip(header, cells)))
        else:
            header = None
    return out


TABLES = tables()


def table(heading: str) -> list[dict[str, str]]:
    assert TABLES.get(heading), f"docs/conformance.md has no table under '{heading}'"
    return TABLES[heading]


def hex_status(text: str) -> int:
    return int(text, 16)


# ------------------------------------------------------------------------------------------ the nodes

class Sink:
    """A plain pynetdicom storage SCP as the gateway's destination: records what was proposed and stored."""

    def __init__(self):
        self.stored: list[tuple[str, str, bytes]] = []  # (SOP class, transfer syntax, dataset bytes)
        self.proposed: list[list[tuple[str, list[str]]]] = []  # per association: (SOP class, [syntaxes])
        self._lock = threading.Lock()
        ae = AE("SINK")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._assoc)])
        self.port = self.server.server_address[1]

    def _assoc(self, event):
        with self._lock:
            self.proposed.append([(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                                  for cx in event.assoc.requestor.requested_contexts])

    def _store(self, event):
        with self._lock:
            self.stored.append((str(event.context.abstract_syntax), str(event.context.transfer_syntax),
                                event.encoded_dataset(include_meta=False)))
        return 0x0000


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, site_keys):
    """A gateway (routes by called AE: PASS, PROTECT, DEID, DEIDSHIFT; the rest blocked) delivering to a
    recording sink, and a receiving node with the research key that trusts the hospital."""
    tmp = tmp_path_factory.mktemp("conformance")
    (h_key, h_cert), (r_key, r_cert) = site_keys["hospital_paths"], site_keys["research_paths"]
    sink = Sink()
    protect_rule = f"    send_to: [sink]\n    action: protect\n    recipients: [{r_cert}]\n    profile: plain\n"
    (tmp / "site.yaml").write_text(f"""\
identity: {{key: {h_key}, cert: {h_cert}}}
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  allow_calling: [PACS]
  spool: spool/
  device: cpu
  retry: {{base_s: 0.05, max_s: 0.3, max_attempts: 100}}
destinations:
  sink: {{ae_title: SINK, host: 127.0.0.1, port: {sink.port}}}
rules:
  - when: {{called_ae: PASS}}
    send_to: [sink]
    action: pass
  - when: {{called_ae: PROTECT}}
{protect_rule}  - when: {{called_ae: DEID}}
{protect_rule}    deidentify: basic
  - when: {{called_ae: DEIDSHIFT}}
{protect_rule}    deidentify: basic
    deidentify_dates: shift
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: 0
  store: received/
  quarantine: rx-quarantine/
  allow_calling: [GW, PACS]
  plain: refuse
  keys: [{{key: {r_key}, cert: {r_cert}}}]
  trust: [{h_cert}]
""")
    cfg = load_config(tmp / "site.yaml")
    gw = Gateway(cfg).start(watch=False)
    rx = Receiver(cfg).start()
    yield {"gw": gw, "rx": rx, "sink": sink, "tmp": tmp, "cfg": cfg}
    rx.stop()
    gw.stop()
    sink.server.shutdown()


def associate(port: int, contexts, *, called: str = "PASS", calling: str = "PACS", max_pdu: int = 0):
    ae = AE(calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=called, max_pdu=max_pdu)


def _ports(nodes) -> dict[str, int]:
    return {"Gateway": nodes["gw"].port, "Receiving node": nodes["rx"].port}


# ------------------------------------------------------------------------------------- 2.1, 2.2 tables

def test_implementation_identity_is_the_one_sent(nodes):
    rows = {r["Item"]: r["Value"] for r in table("2.1 Implementation")}
    assoc = associate(nodes["gw"].port, [(Verification, [ExplicitVRLittleEndian])])
    try:
        assert assoc.is_established
        assert str(assoc.acceptor.implementation_class_uid) == rows["Implementation Class UID"].split()[0] \
            == PYNETDICOM_IMPLEMENTATION_UID
        assert assoc.acceptor.implementation_version_name == rows["Implementation Version Name"]
        assert str(assoc.acceptor.primitive.application_context_name) == rows["Application Context Name"]
    finally:
        assoc.release()


def test_every_sop_class_row_is_accepted_by_both_nodes(nodes):
    rows = table("SOP classes")
    for node, port in _ports(nodes).items():
        column = "Gateway SCP" if node == "Gateway" else "Receiver SCP"
        wanted = [r["UID"] for r in rows if r[column] == "yes"]
        assoc = associate(port, [(uid, [ExplicitVRLittleEndian]) for uid in wanted])
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            assert accepted == set(wanted), f"{node}: {set(wanted) - accepted} not accepted"
            if Verification in wanted:
                assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):  # Verification in both, as stated
            assert "Verification is accepted in\nExplicit and Implicit VR Little Endian" in DOC.read_text()
            assoc = associate(port, [(Verification, [syntax])])
            assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [syntax], (node, syntax)
            assoc.release()


def test_all_storage_sop_classes_the_statement_counts_are_accepted(nodes):
    text = DOC.read_text()
    count = int(re.search(r"\*\*(\d+) Storage SOP Classes\*\*", text).group(1))
    storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    assert len(storage) == count
    for port in _ports(nodes).values():
        accepted = set()
        for start in range(0, len(storage), 120):  # at most 128 contexts per association
            assoc = associate(port, [(uid, [ImplicitVRLittleEndian]) for uid in storage[start:start + 120]])
            accepted |= {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            assoc.release()
        assert accepted == set(storage)


def test_gateway_sends_each_instance_in_its_own_sop_class(nodes):
    rows = [r for r in table("SOP classes") if r["Gateway SCU"] == "yes"]
    assert "1.2.840.10008.5.1.4.1.1.2" in {r["UID"] for r in rows}
    before = len(nodes["sink"].stored)
    assert send_files("127.0.0.1", nodes["gw"].port, CT[:1], called_ae="PROTECT", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(nodes["sink"].stored) > before)
    assert nodes["sink"].stored[-1][0] == str(read_dicom(CT[0]).SOPClassUID)


# ------------------------------------------------------------------------------------- transfer syntaxes

def _accepted_syntax(port: int, proposed: list[str]) -> str | None:
    assoc = associate(port, [(CTImageStorage, proposed)])
    try:
        accepted = assoc.accepted_contexts
        return str(accepted[0].transfer_syntax[0]) if accepted else None
    finally:
        if assoc.is_established:
            assoc.release()


def test_every_transfer_syntax_row_is_accepted_in_the_stated_order(nodes):
    ranked = sorted(table("Transfer syntaxes accepted"), key=lambda r: int(r["Rank"]))
    uids = [r["UID"] for r in ranked]
    for node, port in _ports(nodes).items():
        for uid in uids:  # each alone
            assert _accepted_syntax(port, [uid]) == uid, f"{node}: {uid} not accepted"
        for better, worse in zip(uids, uids[1:]):  # each pair proposed worse first: the better one wins
            assert _accepted_syntax(port, [worse, better]) == better, f"{node}: {better} not preferred to {worse}"
        assert _accepted_syntax(port, list(reversed(uids))) == uids[0]


def test_no_other_transfer_syntax_is_accepted(nodes):
    listed = {r["UID"] for r in table("Transfer syntaxes accepted")}
    others = [str(uid) for uid in pydicom.uid.AllTransferSyntaxes if str(uid) not in listed]
    assert others
    for port in _ports(nodes).values():
        for uid in others:
            assert _accepted_syntax(port, [uid]) is None, uid


def test_the_gateway_proposes_what_the_statement_says(nodes, tmp_path):
    rows = {r["Outgoing instance"].split(" (")[0]: r["Transfer syntax proposed"] for r in
            table("Transfer syntaxes proposed (gateway as SCU)")}
    sink, gw = nodes["sink"], nodes["gw"]
    implicit = CT[1]  # the LIDC CT is Implicit VR Little Endian as stored
    assert str(read_dicom(implicit).file_meta.TransferSyntaxUID) == ImplicitVRLittleEndian
    for called, row, want in (("PROTECT", "protected", ExplicitVRLittleEndian), ("PASS", "passed", None)):
        before = len(sink.stored)
        assert send_files("127.0.0.1", gw.port, [implicit], called_ae=called, calling_ae="PACS") == [0]
        assert wait_for(lambda: len(sink.stored) > before), called
        expected = want or ImplicitVRLittleEndian  # passed: the syntax it was received in
        if want:
            assert want in rows[row]
        else:
            assert rows[row] == "the transfer syntax it was received in"
        sop_class, syntax, _ = sink.stored[-1]
        assert syntax == expected, called
        assert all(len(syntaxes) == 1 for syntaxes in (s for _, s in sink.proposed[-1]))  # one syntax per context


# ------------------------------------------------------------------------------------- association policies

def _policy(name: str) -> dict[str, str]:
    return next(r for r in table("Association policies") if r["Policy"] == name)


def test_default_ae_titles_and_limits_are_the_configurations_defaults():
    titles = _policy("AE title (default)")
    gateway, receiver = GatewayConfig(), ReceiverConfig(quarantine="q")
    assert (gateway.ae_title, receiver.ae_title) == (titles["Gateway"], titles["Receiving node"])
    limit = int(_policy("Maximum concurrent associations")["Gateway"].split(";")[0])
    assert gateway.max_associations == receiver.max_associations == limit


def test_any_called_ae_is_accepted_and_unlisted_callers_are_rejected(nodes):
    assert "any is accepted" in _policy("Called AE title")["Gateway"]
    assert "rejected permanent, calling AE title not recognized" in _policy("Calling AE title")["Gateway"]
    for port in _ports(nodes).values():
        assoc = associate(port, [(Verification, [ExplicitVRLittleEndian])], called="WHATEVER")
        assert assoc.is_established
        assoc.release()
        assoc = associate(port, [(Verification, [ExplicitVRLittleEndian])], calling="STRANGER")
        assert assoc.is_rejected
        rejection = assoc.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)


def test_the_maximum_pdu_length_advertised_is_the_stated_one(nodes):
    stated = int(_policy("Maximum PDU length received")["Gateway"].split()[0])
    for port in _ports(nodes).values():
        assoc = associate(port, [(Verification, [ExplicitVRLittleEndian])])
        assert assoc.acceptor.maximum_length == stated
        assoc.release()


def test_a_pdu_declaring_more_than_the_maximum_closes_the_connection(nodes):
    stated = int(_policy("Maximum PDU length received")["Gateway"].split()[0])
    assoc = associate(nodes["gw"].port, [(Verification, [ExplicitVRLittleEndian])])
    sock = assoc.dul.socket.socket
    sock.sendall(bytes([0x04, 0]) + (stated + 1024).to_bytes(4, "big") + b"\x00" * 64)  # a P-DATA-TF header
    assert wait_for(lambda: not assoc.is_established, timeout=10)


def test_connections_over_the_configured_maximum_are_closed_at_accept(tmp_path, site_keys):
    (tmp_path / "rx.yaml").write_text(f"""\
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: 0
  store: store/
  quarantine: quarantine/
  max_associations: 2
  keys: [{{key: {site_keys['research_paths'][0]}, cert: {site_keys['research_paths'][1]}}}]
""")
    rx = Receiver(load_config(tmp_path / "rx.yaml")).start()
    try:
        held = [associate(rx.port, [(Verification, [ExplicitVRLittleEndian])]) for _ in range(2)]
        assert all(a.is_established for a in held)
        third = associate(rx.port, [(Verification, [ExplicitVRLittleEndian])])
        assert not third.is_established
        for a in held:
            a.release()
        assert wait_for(lambda: associate(rx.port, [(Verification, [ExplicitVRLittleEndian])]).is_established)
    finally:
        rx.stop()


def test_the_stated_timeouts_are_the_listeners(nodes):
    acse = int(_policy("ARTIM / ACSE timeout")["Gateway"].split()[0])
    idle = int(_policy("DIMSE and network timeout (SCP)")["Gateway"].split()[0])
    for node in (nodes["gw"], nodes["rx"]):
        assert (node.ae.acse_timeout, node.ae.dimse_timeout, node.ae.network_timeout) == (acse, idle, idle)
    scu = int(_policy("Timeout as SCU")["Gateway"].split()[0])
    assert nodes["cfg"].destinations["sink"].timeout_s == scu


def test_asynchronous_operations_are_not_negotiated(nodes):
    assert _policy("Asynchronous operations")["Gateway"].startswith("not negotiated")
    ae = AE("PACS")
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked, window.maximum_number_operations_performed = 5, 5
    assoc = ae.associate("127.0.0.1", nodes["gw"].port, ae_title="PASS", ext_neg=[window])
    try:
        assert assoc.is_established
        assert assoc.acceptor.asynchronous_operations == (1, 1)  # one operation at a time
    finally:
        assoc.release()


# ------------------------------------------------------------------------------------------ status codes

def _status_rows(node: str) -> dict[int, dict[str, str]]:
    return {hex_status(r["Status"]): r for r in table("Status codes returned (C-STORE)") if r["Node"] == node}


def _file(ds, folder: Path, name: str) -> Path:
    return write_dicom_atomic(ds, folder / name)


def test_every_gateway_status_row_is_provoked(nodes, tmp_path):
    rows, gw = _status_rows("Gateway"), nodes["gw"]
    provoked = {}
    provoked[0x0000] = send_files("127.0.0.1", gw.port, CT[2:3], called_ae="PASS", calling_ae="PACS")
    provoked[0x0124] = send_files("127.0.0.1", gw.port, CT[2:3], called_ae="NOWHERE", calling_ae="PACS")
    no_study = read_dicom(CT[3])
    del no_study.StudyInstanceUID
    provoked[0xC000] = send_files("127.0.0.1", gw.port, [_file(no_study, tmp_path, "nostudy.dcm")],
                                  called_ae="PASS", calling_ae="PACS")
    spool = gw.spool.objects  # the spool's folder made a file: it cannot be written
    spool.rename(spool.with_name("objects.moved"))
    spool.write_bytes(b"")
    try:
        provoked[0xA700] = send_files("127.0.0.1", gw.port, CT[4:5], called_ae="PASS", calling_ae="PACS")
    finally:
        spool.unlink()
        spool.with_name("objects.moved").rename(spool)
    assert set(provoked) == set(rows), "a status row of the statement is not provoked here"
    assert {code: got for code, got in provoked.items()} == {code: [code] for code in rows}


def test_every_receiving_node_status_row_is_provoked(nodes, site_keys, tmp_path):
    rows, rx = _status_rows("Receiving node"), nodes["rx"]
    assert "quarantined" in rows[0x0110]["Meaning"] and "conflict" in rows[0x0110]["When"]
    hospital, research, other = site_keys["hospital"], site_keys["research"], site_keys["other"]
    original = read_dicom(CT[5])
    good = _file(protect(original, recipients=[research.cert], signer=hospital, profile="plain"), tmp_path, "good.dcm")
    untrusted = _file(protect(read_dicom(CT[6]), recipients=[research.cert], signer=other, profile="plain"),
                      tmp_path, "untrusted.dcm")
    no_key = _file(protect(read_dicom(CT[6]), recipients=[other.cert], signer=hospital, profile="plain"),
                   tmp_path, "nokey.dcm")
    conflicting = read_dicom(CT[5])
    conflicting.PatientName = "FORGED^CONFLICT"
    plain = _file(conflicting, tmp_path, "plain.dcm")
    send = lambda *paths: send_files("127.0.0.1", rx.port, paths, called_ae="RESEARCH", calling_ae="GW")  # noqa: E731
    assert send(good, good) == [0x0000, 0x0000]  # stored, then the identical resend
    stored = rx.path_of((str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
                         str(original.SOPInstanceUID)))
    assert stored.read_bytes() == CT[5].read_bytes()
    assert send(untrusted, no_key, plain) == [0x0110] * 3  # untrusted signer, no key, plain refused
    # a conflict: a protected object whose original differs from what is stored under the same UIDs
    forged = _file(protect(conflicting, recipients=[research.cert], signer=hospital, profile="plain"), tmp_path,
                   "forged.dcm")
    assert send(forged) == [0x0110]
    assert stored.read_bytes() == CT[5].read_bytes()  # never replaced
    events = [r["event"] for r in read_audit(rx.rx.audit)]
    assert events.count("conflict") == 1 and events.count("quarantined") == 3
    # the quarantine cannot be written (a file where its folder must be): the sender must keep it and retry
    folder = Path(rx.rx.quarantine)
    folder.rename(folder.with_name("quarantine.moved"))
    folder.write_bytes(b"")
    try:
        assert send(CT[7]) == [0xA700]
    finally:
        folder.unlink()
        folder.with_name("quarantine.moved").rename(folder)
    assert set(rows) == {0x0000, 0x0110, 0xA700}


# ------------------------------------------------------------------------------------------ security, charsets

def test_each_deidentification_option_row_is_what_the_gateway_sends(nodes):
    rows = table("De-identification (PS3.15 Annex E)")
    sink = nodes["sink"]
    got = {}
    for called in ("DEID", "DEIDSHIFT"):
        before = len(sink.stored)
        assert send_files("127.0.0.1", nodes["gw"].port, CT[8:9], called_ae=called, calling_ae="PACS") == [0]
        assert wait_for(lambda: len(sink.stored) > before), called
        got[called] = pydicom.dcmread(io.BytesIO(sink.stored[-1][2]), force=True)
    for called, options in (("DEID", rows[:1]), ("DEIDSHIFT", rows)):
        ds = got[called]
        assert ds.PatientIdentityRemoved == "YES"
        codes = [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in ds.DeidentificationMethodCodeSequence]
        assert codes == [(r["Code"], "DCM", r["Option"]) for r in options], called
        assert ds.LongitudinalTemporalInformationModified == options[-1][
            "Longitudinal Temporal Information Modified (0028,0303)"]


def test_tls_row_over_real_associations(tls_receiver, pki):  # noqa: F811 - the imported fixtures
    """A TLS listener with require_client_cert takes a TLS 1.2+ caller with a certificate from its CA, and
    nobody else: in the clear, without a certificate, or below TLS 1.2."""
    behaviour = next(r["Behaviour"] for r in table("2.4 Security") if r["Feature"].startswith("DICOM TLS"))
    assert "TLS 1.2 or later" in behaviour and "require_client_cert" in behaviour

    def tls_assoc(ctx):
        ae = AE("GW")
        ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
        return ae.associate("127.0.0.1", tls_receiver.port, ae_title="RESEARCH",
                            tls_args=(ctx, "localhost") if ctx is not None else None)

    with_cert = client_context(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    assoc = tls_assoc(with_cert)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    old = client_context(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    for ctx in (None, client_context(ca=pki / "ca.pem"), old):
        assert not tls_assoc(ctx).is_established


def test_any_character_set_is_forwarded_as_received(nodes, tmp_path):
    row = next(r for r in table("2.5 Character sets") if r["Node"] == "Gateway")
    assert "no transcoding" in row["Behaviour"]
    ds = read_dicom(CT[9])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Zoë"
    ds.InstitutionName = "Hôpital Sainte-Thérèse"
    path = _file(ds, tmp_path, "latin1.dcm")
    sink = nodes["sink"]
    before = len(sink.stored)
    assert send_files("127.0.0.1", nodes["gw"].port, [path], called_ae="PASS", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(sink.stored) > before)
    received = sink.stored[-1][2]
    assert "Müller^Zoë".encode("latin-1") in received and "Müller".encode("utf-8") not in received
    assert received == dataset_to_bytes(ds)[144 + int.from_bytes(dataset_to_bytes(ds)[140:144], "little"):]
