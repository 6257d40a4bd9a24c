"""Gateway, real associations: a SEG sent with its PET slices keeps the watermark off the lesion.

The SEG travels unchanged (it carries no image), the slices it references are protected with its
mask, and a SEG that arrives after its slices were sent is recorded as late.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from miadmark.audit import read_audit
from dicom_node.gateway import Gateway
from dicom_node.storescu import send_files
from dicomnet.queue import LESION_KEEP_S
from miadmark.config import load_config
from miadmark import loaded
from miadmark.engine import Profile
from miadmark.lesion import masks_from_seg

from test_dicom_node_e2e import Collector, dataset_part
from waiting import wait_for

pytestmark = pytest.mark.slow  # real associations (about 10 s for the file)

FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "pet_seg_headneck"
SEG = FOLDER / "SEG_tumor_User1_Manual_Trial1.dcm"


@pytest.fixture(scope="module")
def pet():
    """The SEG's masks, two PET slices it references and one it does not (by file name order)."""
    masks = masks_from_seg(pydicom.dcmread(SEG))
    referenced, other = [], []
    for path in sorted((FOLDER / "PET").glob("*.dcm")):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (referenced if uid in masks else other).append(path)
    return {"masks": masks, "referenced": referenced[:2], "other": other[:1]}


@pytest.fixture
def gateway(tmp_path, site_keys, monkeypatch, request):
    # a plain logo as large as the image: only the lesion mask can keep it off the lesion
    monkeypatch.setattr("miadmark.engine.Profile", functools.partial(Profile, max_area_fraction=1.0))
    loaded.forget()  # engines are cached per process: build this test's own, and leave none behind
    request.addfinalizer(loaded.forget)
    partner = Collector(tmp_path / "partner", "PARTNER")
    key, cert = site_keys["hospital_paths"]
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(f"""\
identity: {{key: {key}, cert: {cert}}}
gateway:
  ae_title: GW
  bind: 127.0.0.1
  port: 0
  spool: spool/
  device: cpu
  retry: {{base_s: 0.05, max_s: 0.3, max_attempts: 100}}
  study_settle_s: {getattr(request, "param", 0)}
destinations:
  partner: {{ae_title: PARTNER, host: 127.0.0.1, port: {partner.port}}}
rules:
  - send_to: [partner]
    action: protect
    recipients: [{site_keys["research_paths"][1]}]
    profile: plain
""")
    gw = Gateway(load_config(cfg_path)).start(watch=False)
    yield gw, partner
    gw.stop()
    partner.stop()


def sent_lines(gw) -> dict[str, dict]:
    return {r["sop_instance_uid"]: r for r in read_audit(gw.config.gateway.audit) if r["event"] == "sent"}


def received(partner) -> dict[str, pydicom.Dataset]:
    """What the destination got, by the original's ImagePositionPatient (the SEG by its UID)."""
    out = {}
    for path in partner.files():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID) if ds.Modality == "SEG" else str(ds.ImagePositionPatient)] = ds
    return out


def lesion_border(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    for axis in (0, 1):
        for step in (-2, -1, 1, 2):
            grown |= np.roll(mask, step, axis=axis)
    return grown & ~mask


def test_seg_first_masks_its_slices_and_travels_unchanged(gateway, pet):
    gw, partner = gateway
    slices = pet["referenced"] + pet["other"]
    assert send_files("127.0.0.1", gw.port, [SEG, *slices], called_ae="PARTNER", calling_ae="PACS") == [0] * 4
    assert wait_for(lambda: len(sent_lines(gw)) == 4, timeout=60), read_audit(gw.config.gateway.audit)
    got = received(partner)
    assert len(got) == 4

    seg = pydicom.dcmread(SEG)
    forwarded = partner.folder / f"{seg.SOPInstanceUID}.dcm"
    assert dataset_part(forwarded.read_bytes()) == dataset_part(SEG.read_bytes())  # byte for byte
    assert got[seg.SOPInstanceUID].PixelData == seg.PixelData

    for path in slices:
        original = pydicom.dcmread(path)
        protected = got[str(original.ImagePositionPatient)]
        assert "EncryptedAttributesSequence" in protected and protected.SOPInstanceUID != original.SOPInstanceUID
        changed = protected.pixel_array != original.pixel_array
        assert changed.mean() > 0.05  # the logo is there
        mask = pet["masks"].get(str(original.SOPInstanceUID))
        if mask is not None:
            assert mask.any() and not changed[mask].any()  # zero lesion pixels changed
            assert changed[lesion_border(mask)].any()  # the logo comes right up to it

    lines = sent_lines(gw)
    assert lines[seg.SOPInstanceUID]["note"] == "lesion source, forwarded unchanged"
    assert lines[seg.SOPInstanceUID]["sent_sop_instance_uid"] == seg.SOPInstanceUID
    uids = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in slices}
    assert [lines[uids[p]].get("lesion_mask") for p in slices] == [True, True, False], lines
    events = [r["event"] for r in read_audit(gw.config.gateway.audit)]
    assert "quarantined" not in events and "lesion_source_late" not in events
    assert gw.queue.counts()["partner"]["quarantined"] == 0
    # the slices' spool files are released once sent; the SEG's is kept for more of its study's images
    # (LESION_KEEP_S after its receipt), then swept
    objects = gw.config.gateway.spool / "objects"
    assert wait_for(lambda: [p.name.split(".dcm")[0].rsplit(".", 1)[0] for p in objects.glob("*.dcm")]
                    == [seg.SOPInstanceUID], timeout=10)
    gw.forwarding.sweep_lesion_sources(now=time.time() + LESION_KEEP_S + 1)
    assert not list(objects.glob("*.dcm"))


def test_seg_after_its_slices_were_sent_is_forwarded_and_recorded_late(gateway, pet):
    gw, partner = gateway
    slices = pet["referenced"]
    assert send_files("127.0.0.1", gw.port, slices, called_ae="PARTNER", calling_ae="PACS") == [0, 0]
    assert wait_for(lambda: gw.queue.counts()["partner"]["done"] == 2, timeout=60)
    assert send_files("127.0.0.1", gw.port, [SEG], called_ae="PARTNER", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(sent_lines(gw)) == 3, timeout=30)
    seg_uid = str(pydicom.dcmread(SEG, stop_before_pixels=True).SOPInstanceUID)
    late = [r for r in read_audit(gw.config.gateway.audit) if r["event"] == "lesion_source_late"]
    assert len(late) == 1 and late[0]["sop_instance_uid"] == seg_uid and late[0]["images_already_sent"] == 2
    assert sent_lines(gw)[seg_uid]["note"] == "lesion source, forwarded unchanged"
    assert [sent_lines(gw)[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)]["lesion_mask"]
            for p in slices] == [False, False]


@pytest.mark.parametrize("gateway", [3.0], indirect=True)  # study_settle_s
def test_with_a_settle_window_a_seg_sent_after_its_slices_still_masks_them(gateway, pet):
    gw, partner = gateway
    slices = pet["referenced"]
    assert send_files("127.0.0.1", gw.port, slices, called_ae="PARTNER", calling_ae="PACS") == [0, 0]
    time.sleep(1.0)  # a second association, inside the window: the study is not quiet yet
    assert gw.queue.counts()["partner"]["done"] == 0
    assert send_files("127.0.0.1", gw.port, [SEG], called_ae="PARTNER", calling_ae="PACS") == [0]
    assert wait_for(lambda: len(sent_lines(gw)) == 3, timeout=60), read_audit(gw.config.gateway.audit)
    lines = sent_lines(gw)
    assert [lines[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)]["lesion_mask"]
            for p in slices] == [True, True]
    assert "lesion_source_late" not in [r["event"] for r in read_audit(gw.config.gateway.audit)]
    got = received(partner)
    for path in slices:
        original = pydicom.dcmread(path)
        changed = got[str(original.ImagePositionPatient)].pixel_array != original.pixel_array
        mask = pet["masks"][str(original.SOPInstanceUID)]
        assert changed.mean() > 0.05 and not changed[mask].any()
