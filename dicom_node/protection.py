"""Protect spooled originals for a destination: the core's protect_many, batched, made once.

A protected copy is written durably to the spool before it is sent, so a resend after a crash
sends the same object. Anything that fails comes back as a reason (the caller quarantines it):
an image that cannot be protected is never sent to a protect destination (fail closed).
Lesion masks (dicom_node.lesions) keep the watermark off each image's lesion.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from pydicom.filereader import read_file_meta_info

from miadmark import loaded
from miadmark.config import Config
from miadmark.dicomio import dataset_to_bytes, read_dicom
from miadmark.errors import MiadmarkError
from miadmark.keys import Identity, subject_name
from miadmark.lesion import is_lesion_source, mask_for
from miadmark.private import write_private

from dicomnet.queue import DeidOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NotProtected:
    reason: str
    transient: bool = False  # a resource error (disk full, memory, file handles): retry, do not quarantine


# OS errors that say "not now", not "never": the job is retried, the original kept.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EIO,
                   errno.EROFS}


def _failure(what: str, exc: BaseException) -> NotProtected:
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS):
        return NotProtected(f"{what}: {type(exc).__name__} ({getattr(exc, 'strerror', None) or 'resources'})",
                            transient=True)
    if isinstance(exc, MiadmarkError):  # the core's refusals name the element, not its value
        return NotProtected(f"{what}: {type(exc).__name__}: {exc}")
    return NotProtected(f"{what}: {type(exc).__name__}")  # others may quote an element's value: not kept


@dataclass(frozen=True)
class Protected:
    path: Path
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    lesion_masked: bool | None = None  # None: a copy made earlier, reused


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

    def certificates(self, paths: tuple[str, ...]) -> list:
        return loaded.certificates(paths)

    def recipient_names(self, paths: tuple[str, ...]) -> list[str]:
        try:
            return [subject_name(c) for c in self.certificates(paths)]
        except MiadmarkError:
            return [Path(p).name for p in paths]

    def _engine(self, profile: str | None):
        return loaded.engine(profile, self.config.gateway.device)

    def protect(self, items: list[tuple[Path, Path]], recipients: tuple[str, ...], profile: str | None,
                lesion_masks: dict[str, np.ndarray] | None = None, *, destination: str,
                deid: DeidOptions) -> list[Protected | NotProtected]:
        """items: (original, protected copy path); lesion_masks: SOP Instance UID -> lesion mask
        (never watermarked). destination: its name keys the protected (and de-identified) UIDs, so a
        resend is the same object there; deid: the rule's de-identification options.
        One result per item: Protected or NotProtected (a reason; transient or not).
        A batch that fails as a whole is retried one image at a time: only the bad image fails."""
        from miadmark.engine import DEFAULT_PROFILE
        from miadmark.protect import protect_many
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
                    ds = read_dicom(src)
                    if is_lesion_source(ds):  # SEG / RTSTRUCT by Modality under another SOP class
                        results[i] = NotProtected("a lesion source (SEG / RTSTRUCT) is not an image to watermark")
                        continue
                    datasets.append(ds)
                    todo.append(i)
                except MiadmarkError as exc:
                    results[i] = NotProtected(f"cannot read the spooled original: {exc}")
                except OSError as exc:
                    results[i] = _failure("cannot read the spooled original", exc)
            if todo:
                masks = [mask_for(ds, lesion_masks or {}) for ds in datasets]
                try:
                    signer, certs, engine = self.signer(), self.certificates(recipients), self._engine(profile)
                except (MiadmarkError, ValueError, OSError) as exc:  # configuration: every image alike
                    outputs = [exc] * len(todo)
                else:
                    run = partial(protect_many, recipients=certs, signer=signer, profile=profile or DEFAULT_PROFILE,
                                  device=self.config.gateway.device, engine=engine, destination=destination,
                                  **deid.protect_options())
                    outputs = _each_alone_on_failure(run, datasets, masks)
                for i, out, mask in zip(todo, outputs, masks):
                    if isinstance(out, BaseException):
                        results[i] = _failure("protect refused", out)
                        continue
                    results[i] = _keep(out, items[i][1], mask is not None)
        return results  # type: ignore[return-value]

    def deidentify_source(self, src: Path, out: Path, recipients: tuple[str, ...], *, destination: str,
                          deid: DeidOptions) -> Protected | NotProtected:
        """A SEG / RTSTRUCT on a de-identified route: not watermarked, but de-identified with the same keyed
        mapping as its study's images (miadmark.deid.deidentify), so its references point at the UIDs the
        recipient sees. Written once to `out` (a resend sends the same object)."""
        from miadmark.deid import deidentify
        with self._lock:
            if out.exists():
                try:
                    return Protected(out, *file_identity(out))
                except Exception:  # noqa: BLE001 - a damaged copy is made again
                    pass
            try:
                ds = read_dicom(src)
                clean = deidentify(ds, signer=self.signer(), recipients=self.certificates(recipients),
                                   destination=destination, profile=deid.deidentify,
                                   dates=deid.deidentify_dates)
            except Exception as exc:  # noqa: BLE001 - fail closed: never sent identified
                return _failure("cannot de-identify the lesion source", exc)
            return _keep(clean, out, None)


def _keep(ds, path: Path, lesion_masked: bool | None) -> Protected | NotProtected:
    """Write what goes out durably to the spool before it is sent (a resend sends these bytes)."""
    try:
        write_private(dataset_to_bytes(ds), path)
        return Protected(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID),
                         lesion_masked)
    except Exception as exc:  # noqa: BLE001 - ENOSPC here is transient: retried
        return _failure("cannot write the protected copy", exc)


def _each_alone_on_failure(run, datasets: list, masks: list) -> list:
    """protect_many over the batch; if the batch fails as a whole, each image alone, so one bad image
    fails by itself and the others go on. Returns outputs or exceptions, one per dataset."""
    try:
        return list(run(datasets, lesion_masks=masks))
    except Exception as exc:  # noqa: BLE001 - fail closed; retried per image below
        if len(datasets) == 1:
            return [exc]
        log.warning("protecting a batch of %d failed (%s): protecting each image alone", len(datasets),
                    type(exc).__name__)
    outputs = []
    for ds, mask in zip(datasets, masks):
        try:
            outputs.append(run([ds], lesion_masks=[mask])[0])
        except Exception as exc:  # noqa: BLE001
            outputs.append(exc)
    return outputs
