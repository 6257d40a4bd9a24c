"""cohort_release without Ray or Orthanc: manifest states, resume settling, batching, backoff, CLI errors."""

from __future__ import annotations

import http.server
import sqlite3
import threading
import time

import pytest
import requests

pytest.importorskip("dicomweb_client")

from cohort_release.driver import _batches, _settle  # noqa: E402
from cohort_release.listing import InstanceRef, parse_query  # noqa: E402
from cohort_release.manifest import FAILED, PENDING, SENT, TODO, Manifest, StateMismatch  # noqa: E402
from cohort_release.patience import Unavailable, patiently  # noqa: E402
from cohort_release.sink import FolderSink, StowSink, open_sink  # noqa: E402
from waiting import free_port  # noqa: E402

REFS = [InstanceRef("1.1", "1.1.1", f"1.1.1.{i}") for i in range(5)] + [InstanceRef("1.1", "1.1.2", "1.1.2.1")]


def test_manifest_resume_states(tmp_path):
    m = Manifest(tmp_path)
    m.bind("http://a/dicom-web", "http://b/dicom-web")
    assert m.add(REFS) == 6 and m.add(REFS) == 0  # a rerun lists again: nothing duplicated
    m.record([{"sop": "1.1.1.0", "state": PENDING, "sent_uid": "9.0"},
              {"sop": "1.1.1.1", "state": FAILED, "reason": "pixel data does not decode"}])
    m.record([{"sop": "1.1.1.0", "state": SENT}])  # confirming keeps the UID recorded before the send
    assert m.sent_uids() == {"1.1.1.0": "9.0"}
    assert [r.sop for r, _ in m.in_state(TODO, FAILED)] == ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4", "1.1.2.1"]
    assert m.reasons(FAILED) == [("1.1.1.1", "pixel data does not decode")]
    m.close()
    m = Manifest(tmp_path)  # reopened (after a crash): same rows
    assert m.counts() == {SENT: 1, FAILED: 1, TODO: 4}
    with pytest.raises(StateMismatch, match="belongs to dest"):
        m.bind("http://a/dicom-web", "http://elsewhere/dicom-web")
    m.close()
    with sqlite3.connect(tmp_path / "manifest.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_settle_asks_the_destination_about_unconfirmed_sends(tmp_path):
    """After a crash between prepare and confirmed send: sent if the destination has the UID, else todo."""
    sink = FolderSink(tmp_path / "out")
    arrived = sink.path_of("1.1", "1.1.1", "9.0")
    arrived.parent.mkdir(parents=True)
    arrived.write_bytes(b"x")
    m = Manifest(tmp_path / "state")
    m.add(REFS[:2])
    m.record([{"sop": "1.1.1.0", "state": PENDING, "sent_uid": "9.0"},
              {"sop": "1.1.1.1", "state": PENDING, "sent_uid": "9.1"}])
    missing = _settle(m, sink, m.in_state(PENDING), lambda line: None)
    assert missing == [REFS[1]]
    assert m.counts() == {SENT: 1, TODO: 1}
    m.close()


def test_batches_are_runs_of_one_series():
    assert [[r.sop for r in b] for b in _batches(REFS, 2)] == [
        ["1.1.1.0", "1.1.1.1"], ["1.1.1.2", "1.1.1.3"], ["1.1.1.4"], ["1.1.2.1"]]


def test_parse_query():
    assert parse_query(["StudyDate=20240101-20241231", " ModalitiesInStudy = CT "]) == {
        "StudyDate": "20240101-20241231", "ModalitiesInStudy": "CT"}
    with pytest.raises(ValueError, match="KEYWORD=VALUE"):
        parse_query(["StudyDate"])


def test_open_sink():
    assert isinstance(open_sink("http://127.0.0.1:8042/dicom-web"), StowSink)
    assert open_sink("file:///tmp/x").folder.as_posix() == "/tmp/x"
    assert open_sink("file://relative/dir").folder.as_posix() == "relative/dir"
    with pytest.raises(ValueError, match="file://DIR"):
        open_sink("ftp://x")


def test_patiently_waits_for_a_service_that_comes_back():
    port = free_port()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/ok" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = None

    def come_back():
        nonlocal server
        time.sleep(1.5)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.serve_forever()

    threading.Thread(target=come_back, daemon=True).start()

    def get(path):
        response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        response.raise_for_status()
        return response.status_code

    try:
        started = time.monotonic()
        assert patiently(lambda: get("/ok"), "test service", 30, first_wait_s=0.2) == 200
        assert time.monotonic() - started >= 1.0  # it really was away, and was waited for
        with pytest.raises(requests.HTTPError):  # a refusal is the instance's own failure: not waited on
            patiently(lambda: get("/missing"), "test service", 30)
    finally:
        while server is None:
            time.sleep(0.05)
        server.shutdown()
    closed = free_port()
    with pytest.raises(Unavailable, match="test service unreachable for 1 s"):
        patiently(lambda: requests.get(f"http://127.0.0.1:{closed}/", timeout=1), "test service", 1,
                  first_wait_s=0.2)


def test_cli_refuses_incomplete_commands(capsys):
    from miadmark.cli import main

    code = main(["release", "--source", "http://127.0.0.1:1/dicom-web", "--dest", "file:///tmp/never",
                 "--sign-key", "k.pem", "--sign-cert", "c.pem"])
    assert code == 2
    assert "--recipient is required" in capsys.readouterr().err


def test_cli_refuses_an_unknown_profile(capsys):
    from miadmark.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["release", "--source", "http://127.0.0.1:1/dicom-web", "--dest", "file:///tmp/never",
              "--recipient", "r.pem", "--profile", "nope"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_cli_refuses_a_destination_the_rules_do_not_name(tmp_path, site_keys, capsys):
    from miadmark.cli import main

    key, cert = site_keys["hospital_paths"]
    config = tmp_path / "site.yaml"
    config.write_text(f"identity: {{key: {key}, cert: {cert}}}\n"
                      "destinations:\n  research: {stow_url: 'http://127.0.0.1:9/dicom-web/studies'}\n"
                      "rules:\n  - action: block\n")
    code = main(["release", "--source", "http://127.0.0.1:1/dicom-web", "--dest", "file:///tmp/never",
                 "--config", str(config), "--dest-name", "cloud"])
    assert code == 2
    assert "--dest-name 'cloud' is not a destination" in capsys.readouterr().err


def test_a_worker_reports_a_source_or_destination_that_stays_away(tmp_path, site_keys):
    """Fetch from a closed port: the instance stays todo (not failed) and the run is told to stop; a STOW
    that cannot reach the destination leaves the batch pending, to be settled with the destination later."""
    from cohort_release.job import ReleaseJob
    from cohort_release.protector import Protector
    from miadmark.dicomio import read_dicom

    from conftest import DICOM_DATA

    key, cert = site_keys["hospital_paths"]
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    job = ReleaseJob(source=closed, dest=closed, dest_name="research", sign_key=str(key), sign_cert=str(cert),
                     recipients=(str(site_keys["research_paths"][1]),), profile="plain", device="cpu",
                     patience_s=1.0, timeout_s=2.0)
    worker = Protector(job)
    ref = InstanceRef("1.2", "1.2.3", "1.2.3.4")
    (fetched,) = worker.prepare(1, [ref])
    assert fetched["state"] == TODO and fetched["unavailable"] and "source (WADO-RS) unreachable" in fetched["reason"]
    ds = read_dicom(sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*"))[0])
    worker.held[2] = [(ref, ds)]
    (sent,) = worker.send(2)
    assert sent["state"] == PENDING and sent["unavailable"] and "destination (STOW-RS) unreachable" in sent["reason"]
    assert worker.send(2) is None  # a batch the worker no longer holds: the driver settles it
