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

from miadmark.dicomio import read_dicom
from miadmark.errors import MiadmarkError
from miadmark.lesion import StudyLesions

from .spool import Spool
from dicomnet.queue import Job, Queue


def is_lesion_source_job(job: Job) -> bool:
    return job.lesion_source  # recorded on arrival (dicomnet.queue.lesion_source_class)


def study_lesions(spool: Spool, queue: Queue, study_uids: set[str]) -> StudyLesions:
    """The lesion sources in the spool for these studies (the core's export step makes their masks for the
    images it protects); each that does not read is listed as unusable with the reason."""
    sources, unusable = [], []
    for rel, uid in queue.lesion_sources(study_uids):
        path = spool.path(rel)
        if not path.exists():
            continue  # released: no image of its study was waiting then
        try:
            sources.append(read_dicom(path))
        except (MiadmarkError, OSError) as exc:
            unusable.append((uid, f"{path.name}: {exc}"))
    return StudyLesions(sources, unusable)
