"""One outcome type and one retry policy for the three ways out (dicomnet.outcome): a permanent refusal
(DIMSE 0x0110, HTTP 409 naming the instance, HTTP 400) goes to the dead letter at once, a transient
one is retried with the same backoff, in the gateway's queue, the Orthanc plugin's senders and outbox,
and the release's STOW-RS sink. Real HTTP servers on loopback; the gateway's own 0x0110 over a real
association is tests/test_node_forward_faults.py."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from dicomnet.outcome import RetryPolicy, Unreachable, backoff_delay, http_outcome
from dicomnet.queue import NewJob, Queue
from dicomnet.stow import StowTarget, post_instances

from conftest import DICOM_DATA

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))[:3]
FAST = RetryPolicy(max_attempts=5, base_s=0.01, max_s=0.02)


def _failed_body(uids: list[str], reason: int) -> bytes:
    items = [{"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [reason]}} for u in uids]
    return json.dumps({"00081198": {"vr": "SQ", "Value": items}}).encode()


@pytest.fixture
def stow_server():
    """A STOW-RS server answering from a script: each entry (status, uids named in FailedSOPSequence,
    failure reason); the last entry repeats. Records how many instances each request carried."""
    seen: list[int] = []
    script: list[tuple[int, list[str], int]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body.count(b"Content-Type: application/dicom\r\n"))
            status, uids, reason = script[min(len(seen), len(script)) - 1]
            data = _failed_body(uids, reason) if uids else b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script, seen
    server.shutdown()


def _instances() -> list[tuple[str, bytes]]:
    return [(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), Path(p).read_bytes()) for p in CT]


def test_http_answers_are_classified_once():
    assert http_outcome(200).ok and http_outcome(204).ok
    assert http_outcome(400).permanent and http_outcome(422).permanent
    for code in (401, 403, 404, 408, 429, 500, 503):
        out = http_outcome(code)
        assert out.unreachable and not out.permanent and out.kind == "unreachable"


def test_stow_409_fails_the_instance_it_names_and_only_it(stow_server):
    url, script, _ = stow_server
    items = _instances()
    script[:] = [(409, [items[1][0]], 0x0110)]
    outcomes = post_instances(StowTarget(url + "/studies"), items)
    assert [o.kind for o in outcomes] == ["transient", "permanent", "transient"]
    script[:] = [(409, [], 0)]  # none named: the request as a whole is refused
    assert all(o.permanent for o in post_instances(StowTarget(url + "/studies"), items))
    script[:] = [(400, [], 0)]
    assert all(o.permanent for o in post_instances(StowTarget(url + "/studies"), items))
    script[:] = [(503, [], 0)]
    with pytest.raises(Unreachable):
        post_instances(StowTarget(url + "/studies"), items)


def test_one_backoff_for_every_way_out():
    """The queue (gateway and plugin) and the release wait the same: RetryPolicy.delay, backoff_delay."""
    for attempts in range(1, 8):
        a, b = random.Random(attempts), random.Random(attempts)
        assert FAST.delay(attempts, a) == backoff_delay(attempts, FAST.base_s, FAST.max_s, b)
    assert [FAST.state_after(n) for n in (1, 4, 5)] == ["pending", "pending", "dead"]
    assert FAST.state_after(1, permanent=True) == "dead"


def _queued(tmp_path) -> tuple[Queue, list]:
    q = Queue(tmp_path / "queue.sqlite")
    q.add(file="a.dcm", sop_uid="1.2", sop_class="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2",
          study_uid="1.2.3", series_uid="1.2.3.4", calling_ae="MOD", called_ae="GW",
          jobs=[NewJob("archive", "pass", "rule 1")])
    return q, q.due("archive", 10)


def test_gateway_queue_dead_letters_a_permanent_refusal_at_once_and_backs_off_a_transient_one(tmp_path):
    q, [job] = _queued(tmp_path)
    before = time.time()
    assert q.mark_failed(job, "status 0xA700 (out of resources: will retry)", **FAST.limits()) == "pending"
    next_try = q.next_due_time("archive")
    assert before + FAST.base_s * 0.5 <= next_try <= time.time() + FAST.base_s * 1.5
    [job] = q.due("archive", 10, now=time.time() + 1)
    assert q.mark_failed(job, "status 0x0110 (refused: not retried)", **FAST.limits(), permanent=True) == "dead"
    assert q.counts()["archive"]["dead"] == 1


def test_plugin_senders_and_outbox_dead_letter_a_409_at_once(stow_server, tmp_path):
    from orthanc_plugin.outbox import Item, Outbox
    from orthanc_plugin.senders import StowSender
    from orthanc_plugin.stow import StowServer

    url, script, _ = stow_server
    items = _instances()
    script[:] = [(409, [items[0][0]], 0x0110)]
    sender = StowSender(StowServer("web", url))
    ready = [(uid, pydicom.dcmread(p)) for (uid, _), p in zip(items, CT)]
    outcomes = sender.send(ready)
    assert [o.kind for o in outcomes] == ["permanent", "transient", "transient"]
    outbox = Outbox(tmp_path / "exports.sqlite")
    outbox.add_job(kind="MiadmarkExport", description="test", target=("dicomweb", "web"), destination="web",
                   calling_ae="ORTHANC", called_ae=None,
                   items=[Item(f"orthanc-{k}", "r", uid, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                               "1.2.3", "1.2.3.4", "protect", "rule 1") for k, (uid, _) in enumerate(items)])
    [(_, rows)] = outbox.due(10)
    states = [outbox.mark_failed(row, o.error, **FAST.limits(), permanent=o.permanent)
              for row, o in zip(rows, outcomes)]
    assert states == ["dead", "pending", "pending"]


def test_release_sink_fails_the_refused_instance_alone_and_retries_the_rest(stow_server):
    from cohort_release.sink import StowSink

    url, script, seen = stow_server
    items = _instances()
    datasets = [pydicom.dcmread(p) for p in CT]
    script[:] = [(409, [items[1][0]], 0x0110), (200, [], 0)]
    result = StowSink(url, patience_s=10, retry=FAST).store(datasets)
    assert result[items[0][0]] is None and result[items[2][0]] is None
    assert "0x0110" in result[items[1][0]] and "1 attempt" in result[items[1][0]]
    assert seen == [3, 2]  # the refused one was not sent again

    seen.clear()
    script[:] = [(400, [], 0)]
    result = StowSink(url, patience_s=10, retry=FAST).store(datasets)
    assert seen == [3] and all("HTTP 400" in r and "1 attempt" in r for r in result.values())

    seen.clear()
    script[:] = [(503, [], 0), (503, [], 0), (200, [], 0)]  # away, then back: retried with the backoff
    result = StowSink(url, patience_s=10, retry=FAST).store(datasets)
    assert seen == [3, 3, 3] and all(r is None for r in result.values())


def test_release_takes_the_retry_block_of_its_config(tmp_path):
    from cohort_release.job import ReleaseJob

    job = ReleaseJob(source="x", dest="y", dest_name="z", sign_key="k", sign_cert="c",
                     retry={"max_attempts": 3, "base_s": 0.5, "max_s": 4.0})
    assert job.sink_options()["retry"] == RetryPolicy(3, 0.5, 4.0)


@pytest.mark.slow  # a gateway with its forwarder
@pytest.mark.parametrize("status", [409, 400])
def test_gateway_dead_letters_a_stow_refusal_after_one_attempt(tmp_path, stow_server, status):
    from dicom_node.gateway import Gateway
    from dicom_node.storescu import send_files
    from miadmark.config import load_config

    from waiting import wait_for

    url, script, seen = stow_server
    script[:] = [(status, [], 0)]
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""\
gateway: {{ae_title: GW, bind: 127.0.0.1, port: 0, spool: spool/, retry: {json.dumps(FAST.limits())}}}
destinations:
  cloud: {{stow_url: "{url}/studies"}}
rules:
  - {{when: {{called_ae: CLOUD}}, send_to: [cloud], action: pass}}
""")
    gw = Gateway(load_config(cfg)).start(watch=False)
    try:
        assert send_files("127.0.0.1", gw.port, CT[:2], called_ae="CLOUD", calling_ae="PACS") == [0, 0]
        assert wait_for(lambda: gw.queue.counts().get("cloud", {}).get("dead") == 2, 30)
        time.sleep(FAST.max_s * 5)  # a retry, if any, would come within this
        assert sum(seen) == 2 and all(e["last_error"] for e in gw.queue.status())
        assert f"HTTP {status}" in gw.queue.status()[0]["last_error"]
    finally:
        gw.stop()
