"""Spooled originals through the core's export step (miadmark.export), for one destination.

This module only translates: spool paths in, the core's outcome out as a file to send. What goes out
on a protect route is written durably to the spool before it is sent, so a resend after a crash sends
the same object: a protected image, or a lesion source de-identified with its study's mapping. A lesion
source forwarded unchanged is sent from its spooled original. A refusal comes back as a reason (the
caller quarantines it, or retries it when transient): an image that cannot be protected is never sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from miadmark import loaded
from miadmark.config import Config
from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.errors import MiadmarkError
from miadmark.export import Forwarded, Refused, export_many, refusal
from miadmark.keys import Identity
from miadmark.lesion import StudyLesions
from miadmark.private import write_private
from miadmark.rules import PROTECT, Decision

from dicomnet.queue import DeidOptions


@dataclass(frozen=True)
class NotProtected:
    reason: str
    transient: bool = False  # a resource error (disk full, memory, file handles): retry, do not quarantine


@dataclass(frozen=True)
class Protected:
    path: Path
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    lesion_masked: bool | None = None  # None: a copy made earlier, reused
    note: str | None = None  # a lesion source: how it goes (miadmark.export.Forwarded.note)


def file_identity(path: Path) -> tuple[str, str, str]:
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


class Protector:
    def __init__(self, config: Config):
        self._lock = threading.Lock()  # protect_many is not assumed re-entrant; copies are shared
        self.configure(config)

    def configure(self, config: Config) -> None:
        with self._lock:
            self.config = config

    def signer(self) -> Identity:
        ident = self.config.identity
        if ident is None:
            raise MiadmarkError("no identity configured to sign protected objects")
        return loaded.identity(ident.key, ident.cert, ident.passphrase_file)

    def protect(self, items: list[tuple[Path, Path]], recipients: tuple[str, ...], profile: str | None,
                lesions: StudyLesions | None = None, *, destination: str,
                deid: DeidOptions) -> list[Protected | NotProtected]:
        """items: (spooled original, copy path) of one route (recipients, profile, de-identification);
        lesions: the studies' lesion sources (their masks keep the watermark off the lesions).
        destination: its name keys the protected (and de-identified) UIDs, so a resend is the same object
        there. One result per item: Protected (what to send) or NotProtected (a reason; transient or not)."""
        decision = Decision(PROTECT, None, (destination,), recipients=tuple(recipients), profile=profile,
                            deidentify=deid.deidentify, restore_identity=deid.restore_identity,
                            deidentify_dates=deid.deidentify_dates)
        results: list[Protected | NotProtected | None] = [None] * len(items)
        with self._lock:
            todo, datasets = [], []
            for i, (src, out) in enumerate(items):
                if out.exists():
                    try:
                        results[i] = Protected(out, *file_identity(out))
                        continue
                    except Exception:  # noqa: BLE001 - a damaged copy is made again
                        pass
                try:
                    datasets.append(read_dicom(src))
                    todo.append(i)
                except MiadmarkError as exc:
                    results[i] = NotProtected(f"cannot read the spooled original: {exc}")
                except OSError as exc:
                    results[i] = _not_protected(refusal("cannot read the spooled original", exc))
            if todo:
                try:
                    signer = self.signer()
                except (MiadmarkError, ValueError, OSError) as exc:  # configuration: every image alike
                    refused = _not_protected(refusal("protect refused", exc))
                    for i in todo:
                        results[i] = refused
                    return results  # type: ignore[return-value]
                outcomes = export_many(datasets, decision, destination=destination, signer=signer, lesions=lesions,
                                       device=self.config.gateway.device)
                for i, outcome in zip(todo, outcomes):
                    results[i] = self._translate(outcome, items[i])
        return results  # type: ignore[return-value]

    @staticmethod
    def _translate(outcome, item: tuple[Path, Path]) -> Protected | NotProtected:
        src, out = item
        if isinstance(outcome, Refused):
            return _not_protected(outcome)
        if isinstance(outcome, Forwarded) and outcome.unchanged:  # sent from the spooled original, as received
            try:
                return Protected(src, *file_identity(src), note=outcome.note)
            except Exception as exc:  # noqa: BLE001 - fail closed: not sent
                return _not_protected(refusal("cannot read the spooled original", exc))
        masked = outcome.lesion_masked if not isinstance(outcome, Forwarded) else None
        return _keep(outcome.dataset, out, masked, getattr(outcome, "note", None))


def _not_protected(refused: Refused) -> NotProtected:
    return NotProtected(refused.reason, transient=refused.transient)


def _keep(ds, path: Path, lesion_masked: bool | None, note: str | None = None) -> Protected | NotProtected:
    """Write what goes out durably to the spool before it is sent (a resend sends these bytes)."""
    try:
        write_private(dataset_to_bytes(ds), path)
        return Protected(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID),
                         lesion_masked, note)
    except Exception as exc:  # noqa: BLE001 - ENOSPC here is transient: retried
        return _not_protected(refusal("cannot write the protected copy", exc))
