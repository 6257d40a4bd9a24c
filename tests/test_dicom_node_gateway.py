"""Gateway on loopback with real associations: pass, block, allowlist, fail closed, retry, reload."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from miadmark.audit import read_audit
from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.config import load_config
from waiting import free_port, wait_for

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CT = sorted((DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))


def write_config(tmp: Path, rx_port: int, rules: str, extra: str = "") -> Path:
    path = tmp / "site.yaml"
    path.write_text(f"""\
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  allow_calling: [PACS, CT1]
  spool: spool/
  retry: {{base_s: 0.05, max_s: 0.3, max_attempts: 100}}
  reload_interval_s: 0.2
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
  archive:  {{ae_title: ARCHIVE, host: 127.0.0.1, port: {rx_port}}}
rules:
{rules}
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: rx-quarantine/
  allow_calling: [GW]
{extra}""")
    return path


PASS_RULES = """\
  - when: {called_ae: ARCHIVE, Modality: CT}
    send_to: [archive]
    action: pass
  - action: block
"""


def stored_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm")) if root.exists() else []


def without_group_length(ds: pydicom.Dataset) -> dict:
    return {e.tag: e.value for e in ds if e.tag.element != 0}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta (what the network carries)."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        fh.seek(0)
        raw = fh.read()
    meta_len = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    return raw[meta_len:]


@pytest.fixture
def site(tmp_path):
    rx_port = free_port()
    cfg_path = write_config(tmp_path, rx_port, PASS_RULES)
    cfg = load_config(cfg_path)
    services = []

    def start(receiver=True, gateway=True):
        out = []
        if receiver:
            rx = Receiver(load_config(cfg_path)).start()  # a test may have edited the file (keys, rules)
            services.append(rx)
            out.append(rx)
        if gateway:
            gw = Gateway(load_config(cfg_path)).start()
            services.append(gw)
            out.append(gw)
        return out

    yield cfg_path, cfg, start
    for s in reversed(services):
        s.stop()


def test_pass_route_delivers_exact_copies(site, tmp_path):
    cfg_path, cfg, start = site
    rx, gw = start()
    files = CT[:6]
    assert send_files("127.0.0.1", gw.port, files, called_ae="ARCHIVE", calling_ae="PACS") == [0] * 6
    assert wait_for(lambda: len(stored_files(cfg.receiver.store)) == 6)
    assert wait_for(lambda: gw.queue.counts()["archive"]["done"] == 6)
    for src in files:
        ds = pydicom.dcmread(src)
        out = cfg.receiver.store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert without_group_length(pydicom.dcmread(out)) == without_group_length(ds)
        assert dataset_bytes(out) == dataset_bytes(src)
    # spool cleaned once delivered, audit has receipt and delivery per instance
    assert wait_for(lambda: not list((cfg.gateway.spool / "objects").glob("*.dcm")))
    events = [r["event"] for r in read_audit(cfg.gateway.audit)]
    assert events.count("received") == 6 and events.count("sent") == 6
    sent = [r for r in read_audit(cfg.gateway.audit) if r["event"] == "sent"][0]
    assert sent["rule"] == "rule 1" and sent["destination"] == "archive" and sent["calling_ae"] == "PACS"


def test_block_answers_failure_and_sends_nothing(site):
    cfg_path, cfg, start = site
    rx, gw = start()
    statuses = send_files("127.0.0.1", gw.port, CT[:3], called_ae="RESEARCH", calling_ae="PACS")
    assert statuses == [0x0124] * 3
    time.sleep(0.3)
    assert stored_files(cfg.receiver.store) == []
    assert not list((cfg.gateway.spool / "objects").glob("*.dcm"))
    audit = read_audit(cfg.gateway.audit)
    assert [r["event"] for r in audit] == ["blocked"] * 3 and "rule 2" in audit[0]["reason"]


def test_calling_ae_not_allowed_is_refused(site):
    cfg_path, cfg, start = site
    rx, gw = start()
    with pytest.raises(ConnectionError, match="rejected"):
        send_files("127.0.0.1", gw.port, CT[:1], called_ae="ARCHIVE", calling_ae="INTRUDER")


def test_destination_down_first_gets_everything_later(site):
    cfg_path, cfg, start = site
    (gw,) = start(receiver=False)
    assert send_files("127.0.0.1", gw.port, CT[:5], called_ae="ARCHIVE", calling_ae="CT1") == [0] * 5
    assert wait_for(lambda: gw.queue.status()[0]["last_error"] is not None, timeout=10)
    assert gw.queue.counts()["archive"]["pending"] == 5
    start(gateway=False)
    assert wait_for(lambda: gw.queue.counts()["archive"]["done"] == 5, timeout=30)
    assert len(stored_files(cfg.receiver.store)) == 5


def test_cannot_protect_is_quarantined_never_sent(site, tmp_path, monkeypatch):
    import miadmark.protect
    from miadmark.errors import UnsupportedImageError
    from miadmark.keys import new_identity

    new_identity("hospital", tmp_path / "keys")
    new_identity("research", tmp_path / "keys")
    cfg_path, cfg, start = site
    cfg_path.write_text("identity: {key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}\n" +
                        cfg_path.read_text().replace(PASS_RULES, """\
  - when: {called_ae: RESEARCH}
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
"""))

    def refuse(datasets, **kw):
        return [UnsupportedImageError("pixel data does not decode") for _ in datasets]

    monkeypatch.setattr(miadmark.protect, "protect_many", refuse)
    rx, gw = start()
    assert send_files("127.0.0.1", gw.port, CT[:2], called_ae="RESEARCH", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: gw.queue.counts()["research"]["quarantined"] == 2)
    assert stored_files(cfg.receiver.store) == []
    reasons = sorted(cfg.gateway.quarantine.glob("*.reason.json"))
    assert len(reasons) == 2 and len(list(cfg.gateway.quarantine.glob("*.dcm"))) == 2
    assert "pixel data does not decode" in reasons[0].read_text()
    assert [r["event"] for r in read_audit(cfg.gateway.audit)].count("quarantined") == 2


def test_profile_auto_protects_with_fast_on_cpu_over_a_real_association(site, tmp_path, monkeypatch):
    import miadmark.protect
    from miadmark.keys import new_identity

    new_identity("hospital", tmp_path / "keys")
    new_identity("research", tmp_path / "keys")
    cfg_path, cfg, start = site
    text = cfg_path.read_text().replace(PASS_RULES, """\
  - when: {called_ae: RESEARCH}
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
    profile: auto
""").replace("  allow_calling: [GW]\n", "  allow_calling: [GW]\n"
             "  keys: [{key: keys/research.key.pem, cert: keys/research.cert.pem}]\n"
             "  trust: [keys/hospital.cert.pem]\n")
    cfg_path.write_text("identity: {key: keys/hospital.key.pem, cert: keys/hospital.cert.pem}\n" + text)
    made = []
    real = miadmark.protect.protect_many

    def recording(datasets, **kw):  # the real core; what it made is kept for the assertions
        out = real(datasets, **kw)
        made.extend(out)
        return out

    monkeypatch.setattr(miadmark.protect, "protect_many", recording)
    rx, gw = start()
    files = CT[:2]
    assert send_files("127.0.0.1", gw.port, files, called_ae="RESEARCH", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: gw.queue.counts()["research"]["done"] == 2, timeout=120)
    assert len(made) == 2 and all("profile fast" in str(d.DerivationDescription) for d in made)  # auto on a CPU
    for src in files:  # the key holder stripped each back to the original
        ds = pydicom.dcmread(src)
        out = cfg.receiver.store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert without_group_length(pydicom.dcmread(out)) == without_group_length(ds)


def test_rules_reload_and_bad_file_keeps_running_rules(site, caplog):
    cfg_path, cfg, start = site
    rx, gw = start()
    text = cfg_path.read_text()
    # a bad file: the running rules stay (ARCHIVE still passes)
    cfg_path.write_text(text.replace("action: pass", "action: allow"))
    assert gw.reload() is False
    assert "keeping the running rules" in caplog.text and "site.yaml:15: rules[0].action" in caplog.text
    assert send_files("127.0.0.1", gw.port, CT[:1], called_ae="ARCHIVE", calling_ae="PACS") == [0]
    # a good change is picked up by the file watcher: now ARCHIVE is blocked
    cfg_path.write_text(text.replace("called_ae: ARCHIVE", "called_ae: NOBODY"))
    assert wait_for(lambda: gw.config.rules[0].when["called_ae"] == "NOBODY", timeout=10)
    assert send_files("127.0.0.1", gw.port, CT[1:2], called_ae="ARCHIVE", calling_ae="PACS") == [0x0124]


def test_spooled_file_without_queue_row_is_recovered(site):
    """Power loss after the durable spool write but before the queue commit reached the disk."""
    import sqlite3
    cfg_path, cfg, start = site
    (gw,) = start(receiver=False)
    assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
    gw.stop()
    con = sqlite3.connect(cfg.gateway.spool / "queue.sqlite")
    con.execute("DELETE FROM jobs")
    con.commit()
    con.close()
    meta = pydicom.dcmread(next((cfg.gateway.spool / "objects").glob("*.dcm"))).file_meta
    assert meta.SendingApplicationEntityTitle == "PACS" and meta.ReceivingApplicationEntityTitle == "ARCHIVE"
    start(gateway=False)
    gw2 = Gateway(load_config(cfg_path)).start()
    try:
        assert wait_for(lambda: gw2.queue.counts()["archive"]["done"] == 3)
        assert len(stored_files(cfg.receiver.store)) == 3
    finally:
        gw2.stop()
