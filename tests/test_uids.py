"""Stable protected UIDs: same original + same destination (or recipient set) -> same UIDs; otherwise not."""

from __future__ import annotations

import uuid

import pytest
from pydicom.uid import UID

from miadmark.dicomio import read_dicom
from miadmark.protect import protect, strip
from miadmark.uids import SOP_INSTANCE, derived_uid, site_secret

from conftest import DICOM_DATA

SOURCE = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "CT_small.dcm"


@pytest.fixture(scope="module")
def original():
    return read_dicom(SOURCE)


def _protect(ds, keys, recipients=("research",), destination=None, signer="hospital"):
    return protect(ds, recipients=[keys[r].cert for r in recipients], signer=keys[signer], profile="plain",
                   destination=destination)


def test_same_destination_same_uids_another_destination_others(original, site_keys):
    first = _protect(original, site_keys, destination="research")
    again = _protect(read_dicom(SOURCE), site_keys, destination="research")  # a resend after a crash
    other = _protect(original, site_keys, destination="vendor")
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert again.SeriesInstanceUID == first.SeriesInstanceUID != original.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID and other.SeriesInstanceUID != first.SeriesInstanceUID
    assert first.StudyInstanceUID == original.StudyInstanceUID  # a derived series in the same study
    for ds in (first, other):
        assert ds.SOPInstanceUID != original.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert UID(ds.SOPInstanceUID).is_valid and len(ds.SOPInstanceUID) <= 64
        assert uuid.UUID(int=int(ds.SOPInstanceUID.removeprefix("2.25."))).version == 8
    # the record still gives back the original UIDs
    stripped = strip(again, keyring=[site_keys["research"]], trust=[site_keys["hospital"].cert])
    assert (stripped.SOPInstanceUID, stripped.SeriesInstanceUID) == (original.SOPInstanceUID,
                                                                     original.SeriesInstanceUID)


def test_without_destination_the_recipient_set_decides(original, site_keys):
    both = _protect(original, site_keys, recipients=("research", "other"))
    both_reordered = _protect(original, site_keys, recipients=("other", "research"))
    one = _protect(original, site_keys, recipients=("research",))
    assert both.SOPInstanceUID == both_reordered.SOPInstanceUID != one.SOPInstanceUID


def test_the_uid_is_keyed_by_the_signer_key(original, site_keys):
    hospital = _protect(original, site_keys, destination="research")
    another_site = _protect(original, site_keys, destination="research", signer="other")
    assert hospital.SOPInstanceUID != another_site.SOPInstanceUID
    secret = site_secret(site_keys["hospital"].key)
    assert len(secret) == 32 and secret != site_secret(site_keys["other"].key)
    uid = derived_uid(secret, SOP_INSTANCE, original.SOPInstanceUID, "destination:research")
    assert uid == hospital.SOPInstanceUID  # the documented derivation, nothing else
