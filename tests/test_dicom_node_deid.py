"""De-identified gateway routes over real associations on loopback (pynetdicom, port 0):

  a real CT slice through a `deidentify: basic` route reaches a keyless destination without the patient's
  identity; the key holder's receiving node stores the exact de-identified object (restore_identity false)
  or the exact original file (restore_identity true); a resend gets the same protected SOP Instance UID
  at the same destination, another destination a different one; BurnedInAnnotation YES quarantines that
  instance only; a SEG on a de-identified route is de-identified with its images' mapping; a queue row
  made by an older gateway (no options recorded) is decided again from the rules in force.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from pathlib import Path

import pydicom
import pytest
from conftest import DICOM_DATA
from pynetdicom import evt

from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from dicomnet.queue import SCHEMA, DeidOptions, NewJob, Queue
from dicomnet.listener import storage_scp_ae
from miadmark.audit import read_audit
from miadmark.config import load_config
from miadmark.deid import Deidentifier
from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.uids import UidMaker, scope_of, site_secret
from waiting import free_port, wait_for

CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))
SEG = DICOM_DATA / "pet_seg_headneck" / "SEG_tumor_User1_Manual_Trial1.dcm"
PET = DICOM_DATA / "pet_seg_headneck" / "PET"
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName")

pytestmark = pytest.mark.slow


class Collector:
    """A keyless storage SCP: keeps every C-STORE as received, in arrival order (repeats included)."""

    def __init__(self, ae_title: str):
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self.server = storage_scp_ae(ae_title).start_server(("127.0.0.1", 0), block=False,
                                                            evt_handlers=[(evt.EVT_C_STORE, self.handle)])
        self.port = self.server.server_address[1]

    def handle(self, event):
        with self._lock:
            self.received.append(event.encoded_dataset())
        return 0

    def datasets(self) -> list[pydicom.Dataset]:
        with self._lock:
            return [pydicom.dcmread(io.BytesIO(raw)) for raw in self.received]


def dataset_part(raw: bytes) -> bytes:
    """The encoded dataset after the file meta (what the network carries)."""
    return raw[144 + int.from_bytes(raw[140:144], "little"):]


@pytest.fixture
def site(tmp_path, site_keys):
    (h_key, h_cert), (r_key, r_cert) = site_keys["hospital_paths"], site_keys["research_paths"]
    keyless = Collector("PARTNER")
    rx_port = free_port()
    cfg_path = tmp_path / "site.yaml"
    protect = f"""    action: protect
    recipients: [{r_cert}]
    profile: plain
    deidentify: basic"""
    cfg_path.write_text(f"""\
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
  partner:  {{ae_title: PARTNER, host: 127.0.0.1, port: {keyless.port}}}
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
  clinic:   {{ae_title: RESEARCH, host: 127.0.0.1, port: {rx_port}}}
rules:
  - when: {{called_ae: DEID}}
    send_to: [partner, research]
{protect}
  - when: {{called_ae: IDENT}}
    send_to: [clinic]
{protect}
    restore_identity: true
  - action: block
receiver:
  ae_title: RESEARCH
  bind: 127.0.0.1
  port: {rx_port}
  store: received/
  quarantine: rx-quarantine/
  allow_calling: [GW]
  keys: [{{key: {r_key}, cert: {r_cert}}}]
  trust: [{h_cert}]
""")
    cfg = load_config(cfg_path)
    services = []

    def start():
        rx = Receiver(cfg).start()
        gw = Gateway(load_config(cfg_path)).start(watch=False)
        services.extend([rx, gw])
        return rx, gw

    yield cfg, start, keyless, site_keys
    for s in reversed(services):
        s.stop()
    keyless.server.shutdown()


def _deidentifier(site_keys, destination: str) -> Deidentifier:
    """The gateway's mapping for a destination: keyed by the signer's site secret and the destination name."""
    return Deidentifier("basic", UidMaker(site_secret(site_keys["hospital"].key), scope_of(destination, [])))


def _sent(cfg, destination: str) -> list[dict]:
    return [r for r in read_audit(cfg.gateway.audit) if r["event"] == "sent" and r["destination"] == destination]


def _stored(cfg) -> list[Path]:
    return sorted(cfg.receiver.store.rglob("*.dcm")) if cfg.receiver.store.exists() else []


def identified(src: Path, folder: Path) -> Path:
    """The real slice as a hospital's PACS holds it: the shared LIDC data was de-identified by TCIA (no
    name, birth date or institution), so the identity a route must remove is put back into a copy."""
    ds = read_dicom(src)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE^Q", "MRN-20481632", "19580214"
    ds.InstitutionName = "Saint Example Hospital"
    out = folder / f"identified-{src.name}"
    out.write_bytes(dataset_to_bytes(ds))
    return out


def test_deidentified_routes_strip_to_the_deidentified_object_or_the_original(site, tmp_path):
    cfg, start, keyless, site_keys = site
    _, gw = start()
    ct = identified(CT[0], tmp_path)
    original = read_dicom(ct)
    assert send_files("127.0.0.1", gw.port, [ct], called_ae="DEID", calling_ae="PACS") == [0]
    assert send_files("127.0.0.1", gw.port, [ct], called_ae="IDENT", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(keyless.received) == 1 and len(_stored(cfg)) == 2), \
        (len(keyless.received), _stored(cfg), gw.queue.status())

    # the keyless destination: protected, and without the patient's identity (also not in any byte)
    got = keyless.datasets()[0]
    assert "EncryptedAttributesSequence" in got and got.PatientIdentityRemoved == "YES"
    for keyword in IDENTITY:
        assert str(got.get(keyword, "") or "").strip() in ("", "ANONYMIZED", "19000101"), keyword  # removed or dummy
        assert got.get(keyword) != original.get(keyword), keyword
    for value in ("MRN-20481632", "DOE^JANE", "19580214", "Saint Example", original.StudyInstanceUID,
                  original.SOPInstanceUID):
        assert str(value).encode() not in keyless.received[0], "identifying value sent to the keyless destination"

    # the key holder's node: the exact de-identified object (research), the exact original file (clinic)
    deidentified = dataset_to_bytes(_deidentifier(site_keys, "research").apply(original))
    want = {pydicom.dcmread(io.BytesIO(deidentified)).SOPInstanceUID: deidentified,
            original.SOPInstanceUID: ct.read_bytes()}
    stored = {p.stem: p.read_bytes() for p in _stored(cfg)}
    assert stored.keys() == want.keys()
    for uid, data in want.items():  # the dataset bytes exactly (the spool's file meta adds the AE titles)
        assert dataset_part(stored[uid]) == dataset_part(data), uid

    # the same original again: the same protected SOP Instance UID at the same destination, another elsewhere
    assert send_files("127.0.0.1", gw.port, [ct], called_ae="DEID", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(keyless.received) == 2 and len(_sent(cfg, "research")) == 2)
    first, again = keyless.datasets()
    assert first.SOPInstanceUID == again.SOPInstanceUID
    partner_uids = {r["sent_sop_instance_uid"] for r in _sent(cfg, "partner")}
    research_uids = {r["sent_sop_instance_uid"] for r in _sent(cfg, "research")}
    assert partner_uids == {first.SOPInstanceUID} and len(research_uids) == 1 and research_uids != partner_uids
    assert {r["deidentify"] for r in _sent(cfg, "partner")} == {"basic"}
    assert len(_stored(cfg)) == 2  # the receiver took the resend as the same instance


def test_burned_in_annotation_is_quarantined_and_the_rest_sent(site, tmp_path):
    cfg, start, keyless, _ = site
    _, gw = start()
    burned = read_dicom(CT[1])
    burned.BurnedInAnnotation = "YES"
    burned_path = tmp_path / "burned.dcm"
    burned_path.write_bytes(dataset_to_bytes(burned))
    assert send_files("127.0.0.1", gw.port, [burned_path, CT[2]], called_ae="DEID", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: gw.queue.counts().get("partner", {}).get("quarantined") == 1
                    and gw.queue.counts()["partner"]["done"] == 1 and len(keyless.received) == 1)
    assert keyless.datasets()[0].ImagePositionPatient == read_dicom(CT[2]).ImagePositionPatient
    assert wait_for(lambda: len(_stored(cfg)) == 1)  # the key holder got the other one only
    assert pydicom.dcmread(_stored(cfg)[0]).ImagePositionPatient == read_dicom(CT[2]).ImagePositionPatient
    quarantined = wait_quarantined(cfg, 2)
    assert {r["destination"] for r in quarantined} == {"partner", "research"}
    assert all(r["sop_instance_uid"] == burned.SOPInstanceUID for r in quarantined)
    assert all("BurnedInAnnotation" in r["reason"] for r in quarantined)
    reasons = [json.loads(p.read_text()) for p in cfg.gateway.quarantine.glob("*.reason.json")]
    assert reasons and all("BurnedInAnnotation" in r["reason"] for r in reasons)


def wait_quarantined(cfg, n: int) -> list[dict]:
    wait_for(lambda: len([r for r in read_audit(cfg.gateway.audit) if r["event"] == "quarantined"]) >= n)
    return [r for r in read_audit(cfg.gateway.audit) if r["event"] == "quarantined"]


def test_a_seg_on_a_deidentified_route_is_deidentified_with_its_images_mapping(site):
    cfg, start, keyless, _ = site
    _, gw = start()
    seg = read_dicom(SEG)
    referenced = {str(item.ReferencedSOPInstanceUID) for frame in seg.PerFrameFunctionalGroupsSequence
                  for derivation in frame.get("DerivationImageSequence", [])
                  for item in derivation.get("SourceImageSequence", [])}
    image = next(p for p in sorted(PET.glob("*.dcm"))
                 if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) in referenced)
    assert send_files("127.0.0.1", gw.port, [SEG, image], called_ae="DEID", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: len(keyless.received) == 2 and len(_stored(cfg)) == 2, timeout=120), \
        (len(keyless.received), _stored(cfg), gw.queue.status())
    by_class = {str(ds.SOPClassUID): ds for ds in keyless.datasets()}
    out_seg = by_class[str(seg.SOPClassUID)]
    assert "EncryptedAttributesSequence" not in out_seg  # not watermarked, but de-identified
    assert out_seg.PatientIdentityRemoved == "YES" and str(seg.PatientID) not in str(out_seg.get("PatientID", ""))
    assert str(seg.PatientID).encode() not in b"".join(keyless.received)
    # its references point at what the key holder gets back when it strips the image
    stripped_image = next(pydicom.dcmread(p) for p in _stored(cfg)
                          if pydicom.dcmread(p, stop_before_pixels=True).Modality == "PT")
    stored_seg = next(pydicom.dcmread(p) for p in _stored(cfg)
                      if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG")
    references = {str(item.ReferencedSOPInstanceUID) for frame in stored_seg.PerFrameFunctionalGroupsSequence
                  for derivation in frame.get("DerivationImageSequence", [])
                  for item in derivation.get("SourceImageSequence", [])}
    assert stripped_image.SOPInstanceUID in references and not references & referenced
    assert stored_seg.StudyInstanceUID == stripped_image.StudyInstanceUID != seg.StudyInstanceUID
    notes = {r.get("note") for r in _sent(cfg, "partner")}
    assert "lesion source, de-identified, not watermarked" in notes


OLD_SCHEMA = SCHEMA.replace(",\n    deid         TEXT", "")


def test_an_older_queue_is_migrated_and_its_rows_decided_again_from_the_rules(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    with sqlite3.connect(spool / "queue.sqlite") as con:  # a database made before the column existed
        con.executescript(OLD_SCHEMA)
        con.execute("INSERT INTO jobs (file, sop_uid, sop_class, transfer_syntax, study_uid, series_uid, calling_ae,"
                    " called_ae, destination, action, rule, recipients, profile, next_try, created, updated)"
                    " VALUES ('objects/a.dcm','1.2','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2','3','4','PACS',"
                    "'DEID','partner','protect','rule 1','[]','plain',0,0,0)")
    assert "deid" not in {r[1] for r in sqlite3.connect(spool / "queue.sqlite").execute("PRAGMA table_info(jobs)")}
    queue = Queue(spool / "queue.sqlite")
    Queue(spool / "queue.sqlite")  # a second opener (the forwarding process) finds it migrated
    [job] = queue.due("partner", 10)
    assert job.deid is None  # not recorded: the forwarder decides again (or does not send)
    queue.add(file="objects/b.dcm", sop_uid="1.3", sop_class="x", transfer_syntax="y", study_uid="3", series_uid="4",
              calling_ae="PACS", called_ae="DEID",
              jobs=[NewJob("partner", "protect", "rule 1", (), "plain", DeidOptions("basic", True, "shift"))])
    assert [j.deid for j in queue.due("partner", 10)] == [None, DeidOptions("basic", True, "shift")]
    queue.close()


def test_a_row_without_options_is_sent_as_the_rules_in_force_say(site, tmp_path):
    """A protect job queued by an older gateway: de-identified if the rules in force say so, and not
    sent at all once they no longer protect it."""
    cfg, start, keyless, _ = site
    _, gw = start()
    gw.stop()  # only the spool and the queue: rows written as an older gateway wrote them
    ct = identified(CT[3], tmp_path)
    original = read_dicom(ct)
    rel = gw.spool.store(ct.read_bytes(), str(original.SOPInstanceUID))
    for destination in ("partner", "clinic"):
        gw.queue._con().execute(
            "INSERT INTO jobs (file, sop_uid, sop_class, transfer_syntax, study_uid, series_uid, calling_ae,"
            " called_ae, destination, action, rule, recipients, profile, next_try, created, updated)"
            " VALUES (?,?,?,?,?,?,'PACS','DEID',?,'protect','rule 1',?,'plain',0,0,0)",
            (rel, original.SOPInstanceUID, original.SOPClassUID, original.file_meta.TransferSyntaxUID,
             original.StudyInstanceUID, original.SeriesInstanceUID, destination,
             json.dumps([str(p) for p in cfg.rules[0].recipients])))
    gw.queue.close()
    gw2 = Gateway(load_config(cfg.path)).start(watch=False)
    try:
        # partner: rule 1 (called DEID) de-identifies; clinic: no rule protects called-DEID traffic for it
        assert wait_for(lambda: len(keyless.received) == 1
                        and gw2.queue.counts().get("clinic", {}).get("quarantined") == 1)
        got = keyless.datasets()[0]
        assert got.PatientIdentityRemoved == "YES" and b"MRN-20481632" not in keyless.received[0]
        reason = next(r for r in read_audit(cfg.gateway.audit) if r["event"] == "quarantined")["reason"]
        assert "rules in force no longer protect it" in reason
    finally:
        gw2.stop()
