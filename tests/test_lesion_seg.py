"""A real DICOM SEG (PET head-and-neck tumour) gives the lesion mask: zero pixels change inside it."""

from __future__ import annotations

import numpy as np

from miadmark.dicomio import read_dicom
from miadmark.lesion import collect_masks, mask_for
from miadmark.protect import protect_many

from conftest import DICOM_DATA

FOLDER = DICOM_DATA / "pet_seg_headneck"


def test_seg_masks_are_respected_by_protect(site_keys):
    seg = read_dicom(FOLDER / "SEG_tumor_User1_Manual_Trial1.dcm")
    masks = collect_masks([seg])
    assert masks and sum(int(m.sum()) for m in masks.values()) > 0
    by_uid = {}
    for path in sorted((FOLDER / "PET").glob("*.dcm")):
        head = read_dicom(path)
        if str(head.SOPInstanceUID) in masks:
            by_uid[str(head.SOPInstanceUID)] = head
    assert by_uid, "the SEG references PET slices of this series"
    images = list(by_uid.values())
    lesions = [mask_for(ds, masks) for ds in images]
    # a plain logo that would cover the whole image: only the lesion can stop it
    from miadmark.engine import Profile, get_engine

    engine = get_engine(Profile(name="plain", max_area_fraction=1.0), "cpu")
    results = protect_many(images, recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                           lesion_masks=lesions, engine=engine)
    changed_outside = 0
    for ds, lesion, out in zip(images, lesions, results):
        assert not isinstance(out, Exception), out
        before, after = ds.pixel_array, out.pixel_array
        assert np.array_equal(before[lesion], after[lesion])  # zero lesion pixels changed
        changed_outside += int((before != after).sum())
    assert changed_outside > 0
