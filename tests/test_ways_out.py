"""The three ways out decide alike (issue 22): the gateway, the Orthanc plugin and `miadmark release`,
each on real servers, each with a de-identifying route (`partner`) and a plain protect route (`plain`)
of the same names, rules, signer and recipient.

Inputs (real data, with a patient's identity put back into copies): a CT slice; a CT slice whose
Modality says SEG (SOP class unchanged); the real SEG of ../shared/data/dicom/pet_seg_headneck; an
RTSTRUCT with a GTV on other slices of the CT's study (tests/test_lesion_rtstruct.py); a CT slice whose
SOP Class UID element carries a corrupted VR.

  (a) nothing delivered on `partner` holds a byte of the patient's name or ID; the three ways deliver
      the same de-identified datasets (compared without the watermark-dependent parts: pixels and the
      encrypted record) that strip to the same object;
  (b) the Modality=SEG slice is protected by all three, on both routes; the SEG and the RTSTRUCT go
      unchanged on `plain` and de-identified alike on `partner`;
  (c) the corrupted-VR file fails alone with its element named; the others go.
After the exports, the audit trail of each way holds their lines under the gateway's event names.
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

import pydicom
import pytest
from bad_inputs import CT, bad_vr_sop_class
from conftest import DICOM_DATA
from test_dicom_node_deid import Collector

from dicom_node.gateway import Gateway
from dicom_node.storescu import send_files
from miadmark.audit import read_audit
from miadmark.config import load_config
from miadmark.dicomio import body_bytes, dataset_to_bytes, read_dicom
from miadmark.keys import load_identity
from miadmark.protect import is_protected, strip
from miadmark.rtstruct import RTSTRUCT_SOP_CLASS
from orthanc_plugin.testing import OrthancProcess, missing
from test_lesion_rtstruct import FOLDER as RTSTRUCT_CT, SLICES as RTSTRUCT_SLICES, gtv_rtstruct
from waiting import wait_for

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

SEG = DICOM_DATA / "pet_seg_headneck" / "SEG_tumor_User1_Manual_Trial1.dcm"
NAME, PATIENT_ID = "DOE^JANE^Q", "MRN-20481632"
ROUTES = ("partner", "plain")
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LESION_SOURCES = ("seg", "rtstruct")
SENT_PER_ROUTE = 4  # the inputs but the corrupted one
# what differs from run to run or way to way by design: the watermark's pixels and the encrypted record
WATERMARK_DEPENDENT = ("PixelData", "EncryptedAttributesSequence", "LargestImagePixelValue",
                       "SmallestImagePixelValue")


def identified(src: Path, dst: Path, **extra) -> Path:
    ds = read_dicom(src)
    ds.PatientName, ds.PatientID = NAME, PATIENT_ID
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    dst.write_bytes(dataset_to_bytes(ds))
    return dst


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ways-in")
    return {"ct": identified(CT[0], folder / "ct.dcm"),
            "ct_modality_seg": identified(CT[1], folder / "ct-modality-seg.dcm", Modality="SEG"),
            "seg": identified(SEG, folder / "seg.dcm"),
            "rtstruct": rtstruct(folder / "rtstruct.dcm"),
            # an unknown VR Orthanc still stores (it refuses 'ZZ' at its door)
            "bad": bad_vr_sop_class(folder / "bad-vr.dcm", CT[2], vr=b"U\x00")}


def rtstruct(dst: Path) -> Path:
    """A real RT Structure Set of the CT's study, its GTV on slices that are not among the inputs."""
    rt = gtv_rtstruct([read_dicom(RTSTRUCT_CT / name) for name in RTSTRUCT_SLICES])
    rt.PatientName, rt.PatientID = NAME, PATIENT_ID
    dst.write_bytes(dataset_to_bytes(rt))
    return dst


def rules(site_keys) -> str:
    cert = site_keys["research_paths"][1]
    return f"""\
rules:
  - send_to: [partner]
    action: protect
    recipients: [{cert}]
    profile: plain
    deidentify: basic
  - send_to: [plain]
    action: protect
    recipients: [{cert}]
    profile: plain
"""


def identity(site_keys) -> str:
    key, cert = site_keys["hospital_paths"]
    return f"identity: {{key: {key}, cert: {cert}}}\n"


def which(ds: pydicom.Dataset, inputs) -> str:
    """Which input a delivered object came from (UIDs change on the way: look at what does not)."""
    if str(ds.SOPClassUID) == SEG_CLASS:
        return "seg"
    if str(ds.SOPClassUID) == RTSTRUCT_SOP_CLASS:
        return "rtstruct"
    position = [str(v) for v in ds.ImagePositionPatient]
    for name in ("ct", "ct_modality_seg", "bad"):
        head = pydicom.dcmread(inputs[name], stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        if [str(v) for v in head.ImagePositionPatient] == position:
            return name
    raise AssertionError("an object that is none of the inputs")


def delivered(raw: list[bytes], inputs) -> dict[str, tuple[bytes, pydicom.Dataset]]:
    out = {}
    for data in raw:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        name = which(ds, inputs)
        assert name not in out, f"{name} delivered twice"
        out[name] = (data, ds)
    return out


# ------------------------------------------------------------------------------------------ the ways

def by_gateway(tmp: Path, site_keys, inputs) -> dict:
    collectors = {route: Collector(route.upper()) for route in ROUTES}
    config = tmp / "gateway.yaml"
    config.write_text(identity(site_keys) + f"""\
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  allow_calling: [PACS]
  spool: spool/
  device: cpu
  retry: {{base_s: 0.05, max_s: 0.3, max_attempts: 3}}
destinations:
  partner: {{ae_title: PARTNER, host: 127.0.0.1, port: {collectors['partner'].port}}}
  plain:   {{ae_title: PLAIN, host: 127.0.0.1, port: {collectors['plain'].port}}}
""" + rules(site_keys))
    cfg = load_config(config)
    gw = Gateway(cfg).start(watch=False)
    try:
        statuses = send_files("127.0.0.1", gw.port, list(inputs.values()), called_ae="GW", calling_ae="PACS")
        assert statuses == [0] * len(inputs)  # taken in: what happens next is the forwarder's
        assert wait_for(lambda: all(len(c.received) == SENT_PER_ROUTE for c in collectors.values())
                        and all(gw.queue.counts().get(r, {}).get("quarantined") == 1 for r in ROUTES), timeout=180), \
            ({r: len(c.received) for r, c in collectors.items()}, gw.queue.counts())
        time.sleep(0.5)  # nothing more arrives
        return {"got": {r: delivered(c.received, inputs) for r, c in collectors.items()},
                "audit": read_audit(cfg.gateway.audit)}
    finally:
        gw.stop()
        for c in collectors.values():
            c.server.shutdown()


def by_plugin(tmp: Path, site_keys, inputs, hospital: OrthancProcess, ids: dict, collectors: dict) -> dict:
    for route in ROUTES:
        response = hospital.post(f"/modalities/{route}/store", {"Resources": list(ids.values()), "Synchronous": True})
        answer = response.json()  # a synchronous export with a failed instance is a failed job (HTTP 500)
        assert answer["InstancesCount"] == len(inputs) and answer["FailedInstancesCount"] == 1, response.text
        (error,) = answer["MiadMark"]["Errors"]
        assert "SOPClassUID (0008,0016)" in error, error
    assert wait_for(lambda: all(len(c.received) == SENT_PER_ROUTE for c in collectors.values()), timeout=60), \
        {r: len(c.received) for r, c in collectors.items()}
    time.sleep(0.5)
    return {"got": {r: delivered(c.received, inputs) for r, c in collectors.items()},
            "audit": read_audit(tmp / "plugin-spool" / "audit.jsonl")}


def by_release(tmp: Path, site_keys, inputs, hospital: OrthancProcess) -> dict:
    from miadmark.cli import main

    config = tmp / "release.yaml"
    config.write_text(identity(site_keys) + """\
gateway: {spool: release-spool/}
destinations:
  partner: {stow_url: 'http://127.0.0.1:9/dicom-web/studies'}
  plain:   {stow_url: 'http://127.0.0.1:9/dicom-web/studies'}
""" + rules(site_keys))
    got = {}
    for route in ROUTES:
        folder = tmp / f"released-{route}"
        code = main(["release", "--source", hospital.url + "/dicom-web", "--dest", folder.as_uri(),
                     "--dest-name", route, "--config", str(config), "--state", str(tmp / f"state-{route}"),
                     "--device", "cpu", "--no-progress"])
        assert code != 0  # the corrupted file failed
        got[route] = delivered([p.read_bytes() for p in sorted(folder.rglob("*.dcm"))], inputs)
    return {"got": got, "audit": read_audit(load_config(config).gateway.audit)}


@pytest.fixture(scope="module")
def ways(tmp_path_factory, site_keys, inputs):
    tmp = tmp_path_factory.mktemp("ways")
    out = {"gateway": by_gateway(tmp, site_keys, inputs)}
    collectors = {route: Collector(route.upper()) for route in ROUTES}
    plugin_config = tmp / "plugin.yaml"
    plugin_config.write_text(identity(site_keys) + f"""\
gateway: {{spool: {tmp / 'plugin-spool'}}}
destinations:
  partner: {{orthanc_modality: partner}}
  plain:   {{orthanc_modality: plain}}
""" + rules(site_keys))
    modalities = {route: [route.upper(), "127.0.0.1", c.port] for route, c in collectors.items()}
    try:
        with OrthancProcess(tmp / "hospital", aet="HOSPITAL", miadmark_config=plugin_config,
                            modalities=modalities) as hospital:
            ids = {name: hospital.upload(path)["ID"] for name, path in inputs.items()}
            out["plugin"] = by_plugin(tmp, site_keys, inputs, hospital, ids, collectors)
            out["plugin"]["status"] = hospital.get_json("/miadmark/status")
            out["plugin"]["metrics"] = hospital.get("/miadmark/metrics").text
            out["release"] = by_release(tmp, site_keys, inputs, hospital)
    finally:
        for c in collectors.values():
            c.server.shutdown()
    yield out
    import ray

    ray.shutdown()


# ------------------------------------------------------------------------------------------ the tests

def comparable(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The dataset without what depends on the watermark run, group lengths or the file meta."""
    ds = copy.deepcopy(ds)
    for keyword in WATERMARK_DEPENDENT:
        if keyword in ds:
            del ds[keyword]
    for elem in list(ds):
        if elem.tag.element == 0 or elem.tag.is_private:
            del ds[elem.tag]
    return ds


def test_deidentifying_route_sends_no_identity_and_the_same_objects_by_all_three(ways, site_keys):
    research = load_identity(*site_keys["research_paths"])
    for way, result in ways.items():
        for name, (data, _) in result["got"]["partner"].items():
            for value in (NAME, "DOE^JANE", PATIENT_ID):
                assert value.encode() not in data, (way, name, value)
    for name in ("ct", "ct_modality_seg", *LESION_SOURCES):
        objects = {way: result["got"]["partner"][name][1] for way, result in ways.items()}
        first = comparable(objects["gateway"])
        assert first.get("PatientIdentityRemoved") == "YES", name
        for way in ("plugin", "release"):
            assert comparable(objects[way]) == first, (name, way)
        if name not in LESION_SOURCES:  # the protected images strip to the same de-identified object
            assert all(is_protected(ds) for ds in objects.values()), {w: is_protected(ds) for w, ds in objects.items()}
            stripped = {way: body_bytes(strip(ds, keyring=[research], trust=[site_keys["hospital"].cert]))
                        for way, ds in objects.items()}
            assert stripped["plugin"] == stripped["gateway"] == stripped["release"], name


def test_modality_seg_is_never_delivered_unchanged(ways, inputs):
    original = read_dicom(inputs["ct_modality_seg"])
    for way, result in ways.items():
        for route in ROUTES:
            _, ds = result["got"][route]["ct_modality_seg"]
            assert "EncryptedAttributesSequence" in ds, (way, route)
            assert ds.PixelData != original.PixelData and ds.SOPInstanceUID != original.SOPInstanceUID


@pytest.mark.parametrize("name", LESION_SOURCES)
def test_a_real_lesion_source_goes_unchanged_on_plain_and_deidentified_on_partner_by_all_three(ways, inputs, name):
    source = read_dicom(inputs[name])
    for way, result in ways.items():
        _, plain = result["got"]["plain"][name]
        assert "EncryptedAttributesSequence" not in plain and plain.get("PixelData") == source.get("PixelData")
        assert comparable(plain) == comparable(source), way
        _, partner = result["got"]["partner"][name]
        assert "EncryptedAttributesSequence" not in partner and partner.get("PixelData") == source.get("PixelData")
        assert partner.SOPInstanceUID != source.SOPInstanceUID and partner.PatientIdentityRemoved == "YES", way


def test_the_corrupted_vr_file_fails_alone_named_by_all_three(ways):
    for way, result in ways.items():
        for route in ROUTES:
            assert "bad" not in result["got"][route] and len(result["got"][route]) == SENT_PER_ROUTE, (way, route)
        refused = [line for line in result["audit"] if line["event"] == "quarantined"]
        assert {line["destination"] for line in refused} == set(ROUTES), (way, refused)
        for line in refused:
            assert "SOPClassUID (0008,0016)" in line["reason"], (way, line)


def test_every_way_writes_the_gateways_audit_lines_and_the_plugin_counts_them(ways):
    for way, result in ways.items():
        sent = [line for line in result["audit"] if line["event"] == "sent"]
        assert len(sent) == 2 * SENT_PER_ROUTE, (way, sent)
        for line in sent:
            assert line["action"] == "protect" and line["sent_sop_instance_uid"] and line["sop_instance_uid"]
            assert line["destination"] in ROUTES
        notes = sorted(line.get("note", "") for line in sent if line.get("note"))
        assert notes == ["lesion source, de-identified, not watermarked"] * len(LESION_SOURCES) + [
            "lesion source, forwarded unchanged"] * len(LESION_SOURCES), way
        text = json.dumps(result["audit"])
        assert NAME not in text and PATIENT_ID not in text
    metrics = ways["plugin"]["metrics"]
    for route in ROUTES:
        counted = [line for line in metrics.splitlines()
                   if line.startswith("miadmark_instances_sent_total{") and f'destination="{route}"' in line]
        assert counted and sum(float(line.rsplit(" ", 1)[1]) for line in counted) == SENT_PER_ROUTE, metrics


def test_the_plugin_settles_every_row(ways):
    queue = ways["plugin"]["status"]["Queue"]
    assert queue
    for entry in queue:
        assert entry.get("pending", 0) == 0 and entry.get("retrying", 0) == 0, queue
