"""Lesion sources in the gateway: the DICOM SEG and RTSTRUCT objects received for a study.

On a protect route a lesion source is not an image to watermark: it is forwarded unchanged (the
receiving site needs it with its study), or, on a route with `deidentify`, de-identified with the same
keyed mapping as its study's images (miadmark.deid.deidentify: its references still point at the
de-identified images; no record, so a key holder gets the de-identified object, whatever
restore_identity says; with restore_identity true its references name the de-identified UIDs, not
the restored originals'), and its masks keep the watermark off the lesions of the
images of its study protected after it was received, whatever their destination. Its spool file
stays while an image of its study waits and for LESION_KEEP_S after its receipt, so images that
follow it, in the same association or later, still get its mask (Queue.releasable; the forwarders
sweep the kept files when idle).

Ordering limit: by default the gateway does not wait for a study to be complete. A forwarder takes
an image as soon as it is queued, in batches, and protects it with the lesion sources of its study
received by then. `gateway.study_settle_s` makes protect-route images wait until their study has
received nothing for that long (Queue.add), so a SEG / RTSTRUCT sent within the window still
counts. One received after its images were protected cannot protect them: they have gone, or their
protected copy is made and a resend sends that same copy. The late source is still forwarded
unchanged, and the audit log records `lesion_source_late` with how many images of the study had
already been sent to that destination. Senders should send the SEG / RTSTRUCT before its images (in
one association, or earlier), or the gateway should have a settle window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from miadmark.dicomio import read_dicom
from miadmark.errors import MiadmarkError
from miadmark.lesion import masks_of_sources
from miadmark.rtstruct import is_rtstruct

from .spool import Spool
from dicomnet.queue import Job, Queue

FORWARDED_UNCHANGED = "lesion source, forwarded unchanged"
FORWARDED_DEIDENTIFIED = "lesion source, de-identified, not watermarked"


def is_lesion_source_job(job: Job) -> bool:
    return job.lesion_source  # recorded on arrival (dicomnet.queue.lesion_source_class)


@dataclass
class StudyLesions:
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # image SOP Instance UID -> mask
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (source SOP Instance UID, reason)


def study_lesions(spool: Spool, queue: Queue, study_uids: set[str], image_paths: list[Path]) -> StudyLesions:
    """Masks, for the images at `image_paths`, of the lesion sources in the spool for these studies.
    RTSTRUCT contours are placed with the images' headers (read only when an RTSTRUCT is there)."""
    out = StudyLesions()
    sources, uid_of = [], {}
    for rel, uid in queue.lesion_sources(study_uids):
        path = spool.path(rel)
        if not path.exists():
            continue  # released: no image of its study was waiting then
        try:
            ds = read_dicom(path)
        except (MiadmarkError, OSError) as exc:
            out.unusable.append((uid, f"{path.name}: {exc}"))
            continue
        sources.append(ds)
        uid_of[id(ds)] = uid
    if not sources:
        return out
    images = _headers(image_paths) if any(is_rtstruct(ds) for ds in sources) else []
    out.masks, unusable = masks_of_sources(sources, images)
    out.unusable += [(uid_of[id(ds)], reason) for ds, reason in unusable]
    return out


def _headers(paths: list[Path]) -> list[pydicom.Dataset]:
    headers = []
    for path in paths:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - an unreadable image fails (closed) when it is protected
            continue
    return headers
