"""Lesion sources of an export: the DICOM SEG and RTSTRUCT objects Orthanc holds for its studies.

An export that protects images of a study reads them through the REST API, whether or not they
are part of the export, and keeps the watermark off their lesions (miadmark.lesion). A lesion
source that is part of a protect export is not watermarked: the export step sends it unchanged, or
de-identified on a de-identifying route (delivery.py).

Ordering limit: an export uses the lesion sources Orthanc holds when it runs. Auto-export waits
for the study to be stable (Orthanc's StableAge), so a SEG / RTSTRUCT stored before then is used.
One stored after its images were exported cannot protect them: the next stable-study export
sends it unchanged, and the images it would have protected are not sent again.
"""

from __future__ import annotations

import json

from pydicom.dataset import Dataset

from miadmark.dicomio import dataset_from_bytes
from miadmark.errors import MiadmarkError
from miadmark.lesion import lesion_kind

from .sdk import orthanc

LESION_MODALITIES = {"SEG", "RTSTRUCT"}  # the Modality every SEG / RTSTRUCT series has


def lesion_sources_of(study_uids: set[str]) -> tuple[list[Dataset], list[tuple[str, str]]]:
    """The SEG / RTSTRUCT datasets stored for these studies, and (Orthanc instance, reason) for
    each that does not read."""
    sources: list[Dataset] = []
    unreadable: list[tuple[str, str]] = []
    for uid in sorted(study_uids):
        try:
            study = orthanc.LookupStudy(uid)
        except Exception:  # noqa: BLE001 - not stored here: nothing to look at
            continue
        for series in json.loads(orthanc.RestApiGet(f"/studies/{study}/series")):
            if str(series.get("MainDicomTags", {}).get("Modality", "")).strip().upper() not in LESION_MODALITIES:
                continue
            for iid in series.get("Instances", []):
                try:
                    ds = dataset_from_bytes(orthanc.GetDicomForInstance(iid))
                except MiadmarkError as exc:
                    unreadable.append((iid, str(exc)))
                    continue
                try:
                    if lesion_kind(ds) is not None:
                        sources.append(ds)
                except MiadmarkError as exc:
                    unreadable.append((iid, str(exc)))
    return sources, unreadable
