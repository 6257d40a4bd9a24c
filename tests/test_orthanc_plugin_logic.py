"""The Orthanc plugin's own logic without Orthanc: delivery, targets, exports and senders take the SDK
through orthanc_plugin.sdk, so here they run against a small fake SDK object (Orthanc's REST answers
for the calls they make). The network is real: a STOW-RS server and a C-STORE SCP on loopback. The
real-Orthanc end-to-end tests (test_orthanc_*.py) stay: this is a unit test of our logic.

A permanent refusal (DIMSE 0x0110, HTTP 409, HTTP 400) is a dead letter after one attempt; a
transient answer (HTTP 503) waits under the same retry policy as the gateway's and is then delivered,
with the same protected object (same UID) as the first attempt."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dicomnet.outcome import RetryPolicy
from miadmark.config import parse_config
from orthanc_plugin import sdk

from conftest import DICOM_DATA

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:2]
RETRY = RetryPolicy(max_attempts=5, base_s=0.05, max_s=0.1)


class FakeOrthanc:
    """The SDK calls the delivery path makes, answered from memory as Orthanc would."""

    def __init__(self, config: dict):
        self.instances = {f"orthanc-{k}": p.read_bytes() for k, p in enumerate(CT)}
        self.config = config
        self.logs: list[str] = []

    def GetDicomForInstance(self, iid):  # noqa: N802 - the SDK's names
        return self.instances[iid]

    def GetConfiguration(self):  # noqa: N802
        return json.dumps(self.config)

    def RestApiGet(self, uri):  # noqa: N802
        parts = uri.strip("/").split("/")
        if parts[0] == "modalities" and parts[-1] == "configuration":
            return json.dumps(self.config["DicomModalities"][parts[1]])
        if parts[0] == "instances" and parts[1] in self.instances:
            return json.dumps({"ID": parts[1]})
        raise ValueError(f"Unknown resource: {uri}")

    def LookupStudy(self, uid):  # noqa: N802 - no SEG / RTSTRUCT stored here
        raise ValueError("Unknown resource")

    def LogWarning(self, message):  # noqa: N802
        self.logs.append(message)


@pytest.fixture
def stow():
    """A STOW-RS server answering each request with the next status of `script` (the last repeats),
    recording the SOP Instance UIDs it was sent."""
    script: list[int] = []
    received: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            parts = [p for p in body.split(b"\r\nContent-Type: application/dicom\r\n\r\n")[1:]]
            received.append([str(pydicom.dcmread(BytesIO(p), stop_before_pixels=True).SOPInstanceUID)
                             for p in parts])
            status = script[min(len(received), len(script)) - 1]
            data = b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script, received
    server.shutdown()


@pytest.fixture
def refusing_scp():
    """A C-STORE SCP that refuses every instance with 0x0110 (processing failure)."""
    ae = AE(ae_title="PARTNER")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    calls = []

    def refuse(event):
        calls.append(event.request.AffectedSOPInstanceUID)
        return 0x0110

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    yield server.server_address[1], calls
    server.shutdown()


class Settings:
    """What delivery reads of the plugin's settings (orthanc_plugin.settings.Settings)."""

    def __init__(self, cfg, identity):
        self.config, self.identity = cfg, identity

    def current(self):
        return self.config

    def option(self, name, default):
        return self.config.orthanc.get(name, default)


def _site(tmp_path, site_keys, dest_yaml: str, action: str = "protect"):
    from miadmark import loaded

    key, cert = site_keys["hospital_paths"]
    rule = (f"{{send_to: [partner], action: protect, profile: plain, recipients: ['{site_keys['research_paths'][1]}']}}"
            if action == "protect" else "{send_to: [partner], action: pass}")
    cfg = parse_config(
        f"identity: {{key: '{key}', cert: '{cert}'}}\n"
        f"destinations:\n  partner: {dest_yaml}\n"
        f"rules:\n  - {rule}\n"
        f"orthanc: {{retry: {json.dumps(RETRY.limits())}, device: cpu, batch_size: 4}}\n", base=tmp_path)
    return Settings(cfg, loaded.identity(key, cert))


def _export(tmp_path, settings, target: tuple[str, str]):
    from orthanc_plugin.delivery import Delivery
    from orthanc_plugin.outbox import Item, Outbox

    outbox = Outbox(tmp_path / "exports.sqlite")
    items = []
    for k, path in enumerate(CT):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(Item(f"orthanc-{k}", "20261207T080000", str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                          str(ds.file_meta.TransferSyntaxUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                          "protect", "rule 1", (), "plain"))
    job_id = outbox.add_job(kind="MiadmarkExport", description="test", target=target, destination="partner",
                            calling_ae="ORTHANC", called_ae=None, items=items)
    return Delivery(outbox, settings, lambda line: None), outbox, job_id


def _deliver_due(delivery, outbox, job_id, now: float | None = None) -> None:
    [(due_job, rows)] = outbox.due(10, now=now)
    assert due_job == job_id
    delivery.deliver(delivery.settings.config, outbox.job(job_id), rows)


@pytest.fixture
def fake_sdk():
    def install(config: dict) -> FakeOrthanc:
        fake = FakeOrthanc(config)
        sdk.use(fake)
        return fake
    yield install
    sdk.use(None)


@pytest.mark.parametrize("status", [409, 400])
def test_a_stow_refusal_is_a_dead_letter_after_one_attempt(tmp_path, site_keys, stow, fake_sdk, status):
    url, script, received = stow
    script[:] = [status]
    fake_sdk({"DicomWeb": {"Servers": {"web": {"Url": url}}}})
    settings = _site(tmp_path, site_keys, "{orthanc_dicomweb: web}")
    delivery, outbox, job_id = _export(tmp_path, settings, ("dicomweb", "web"))
    _deliver_due(delivery, outbox, job_id)
    progress = outbox.progress(job_id)
    assert progress["dead"] == len(CT) and progress["pending"] == progress["retrying"] == 0
    assert {d["Attempts"] for d in outbox.dead_letters()} == {1}
    assert all(f"HTTP {status}" in d["Reason"] and "refused: not retried" in d["Reason"]
               for d in outbox.dead_letters())
    assert len(received) == len(CT)  # each sent once, never again


def test_a_plain_export_refused_by_stow_is_a_dead_letter_after_one_attempt(tmp_path, site_keys, stow, fake_sdk):
    url, script, received = stow
    script[:] = [409]
    fake_sdk({"DicomWeb": {"Servers": {"web": {"Url": url}}}})
    settings = _site(tmp_path, site_keys, "{orthanc_dicomweb: web}", action="pass")
    delivery, outbox, job_id = _export(tmp_path, settings, ("dicomweb", "web"))
    _deliver_due(delivery, outbox, job_id)
    assert outbox.progress(job_id)["dead"] == len(CT) and len(received) == 1  # one request for the chunk
    assert all("HTTP 409" in d["Reason"] and d["Attempts"] == 1 for d in outbox.dead_letters())


def test_a_dimse_0x0110_is_a_dead_letter_after_one_attempt(tmp_path, site_keys, refusing_scp, fake_sdk):
    port, calls = refusing_scp
    fake_sdk({"DicomAet": "ORTHANC",
              "DicomModalities": {"partner": {"AET": "PARTNER", "Host": "127.0.0.1", "Port": port}}})
    settings = _site(tmp_path, site_keys, "{orthanc_modality: partner}")
    delivery, outbox, job_id = _export(tmp_path, settings, ("modality", "partner"))
    _deliver_due(delivery, outbox, job_id)
    assert outbox.progress(job_id)["dead"] == len(CT) and len(calls) == len(CT)
    assert all("0x0110" in d["Reason"] and d["Attempts"] == 1 for d in outbox.dead_letters())


def test_a_transient_answer_waits_the_backoff_then_the_same_object_is_delivered(tmp_path, site_keys, stow,
                                                                                  fake_sdk):
    url, script, received = stow
    script[:] = [503, 200]
    fake_sdk({"DicomWeb": {"Servers": {"web": {"Url": url}}}})
    settings = _site(tmp_path, site_keys, "{orthanc_dicomweb: web}")
    delivery, outbox, job_id = _export(tmp_path, settings, ("dicomweb", "web"))
    before = time.time()
    _deliver_due(delivery, outbox, job_id)
    progress = outbox.progress(job_id)
    assert progress["retrying"] == len(CT) and progress["dead"] == 0
    # the backoff is the policy's: attempt 1 waits base_s times a jitter in [0.5, 1.5)
    assert before + RETRY.base_s * 0.5 <= progress["next_try"] <= time.time() + RETRY.base_s * 1.5
    assert len(received) == 1  # unreachable: the job's other rows were not sent into it
    _deliver_due(delivery, outbox, job_id, now=time.time() + 1)
    assert outbox.progress(job_id)["done"] == len(CT)
    first, *later = received
    assert first[0] == later[0][0]  # the protected copy kept in flight: the same object, same UID


def test_the_plugin_registers_the_orthanc_kinds_it_exports_to():
    from orthanc_plugin.exports import KINDS
    assert KINDS == {"modality": "orthanc_modality", "peer": "orthanc_peer", "dicomweb": "orthanc_dicomweb"}


def test_without_orthanc_an_sdk_call_says_what_is_missing():
    sdk.use(None)
    with pytest.raises(RuntimeError, match="only there inside Orthanc"):
        sdk.orthanc.RestApiGet("/system")
