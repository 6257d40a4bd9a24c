"""One way out: what an instance becomes on its way to one destination, for every adapter alike.

    export_many(instances, decisions, *, destination, signer, lesions=None, device="auto") -> [outcome, ...]

instances: Datasets or the bytes of DICOM files; decisions: one miadmark.rules.Decision for all, or
one per instance; lesions: the studies' lesion sources (miadmark.lesion.StudyLesions). Exactly one
outcome per instance:

  Protected  the watermarked object (de-identified first when the rule says deidentify), with its
             study's lesions kept out of the watermark;
  Forwarded  the original of a `pass` rule, or a lesion source (SEG / RTSTRUCT, decided by
             miadmark.lesion.lesion_kind from its SOP Class and content, never from Modality) on a
             protect route: unchanged, or de-identified with the same keyed mapping as its study's
             images when the route de-identifies (its references point at the UIDs the recipient sees);
  Refused    not sent, with a reason that names elements, never their values; `transient` when a
             retry can cure it (out of disk, memory, file handles), else permanent (quarantine).

The gateway, the Orthanc plugin and the cohort release call this and only translate: where the bytes
come from, how the outcome is sent, queued and audited.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from . import loaded
from .dicomio import dataset_from_bytes
from .errors import MiadmarkError
from .keys import Identity
from .lesion import StudyLesions, guarded_value, lesion_kind
from .rules import BLOCK, PASS, Decision

# what a Forwarded lesion source says in its audit line (the gateway's "sent" note)
FORWARDED_UNCHANGED = "lesion source, forwarded unchanged"
FORWARDED_DEIDENTIFIED = "lesion source, de-identified, not watermarked"
# OS errors that say "not now", not "never": retried, the original kept
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EIO,
                   errno.EROFS}


@dataclass(frozen=True)
class Protected:
    dataset: Dataset
    source_uid: str  # the original's SOP Instance UID
    lesion_masked: bool = False
    deidentified: bool = False


@dataclass(frozen=True)
class Forwarded:
    dataset: Dataset  # the original as given (unchanged), or its de-identified copy
    source_uid: str
    lesion_source: bool = False  # False: a `pass` rule's original
    deidentified: bool = False

    @property
    def unchanged(self) -> bool:
        return not self.deidentified

    @property
    def note(self) -> str | None:
        """What the audit line says of it (None for a pass original)."""
        if not self.lesion_source:
            return None
        return FORWARDED_DEIDENTIFIED if self.deidentified else FORWARDED_UNCHANGED


@dataclass(frozen=True)
class Refused:
    reason: str
    source_uid: str = ""
    transient: bool = False  # a resource error: retry later, do not quarantine
    blocked: bool = False  # the rules send nothing of it to this destination

    @property
    def permanent(self) -> bool:
        return not self.transient


Outcome = Protected | Forwarded | Refused


def refusal(what: str, exc: BaseException, source_uid: str = "") -> Refused:
    """A failure as a value-free, classified reason: the core's refusals name the element, not its value;
    other exceptions may quote a value, so only their type is kept."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS):
        return Refused(f"{what}: {type(exc).__name__} ({getattr(exc, 'strerror', None) or 'resources'})",
                       source_uid, transient=True)
    if isinstance(exc, MiadmarkError):
        return Refused(f"{what}: {type(exc).__name__}: {exc}", source_uid)
    return Refused(f"{what}: {type(exc).__name__}", source_uid)


def source_uid_of(ds: Dataset) -> str:
    """The SOP Instance UID for reasons and audit lines ('' when it does not read: never raises)."""
    try:
        value = guarded_value(ds, "SOPInstanceUID", "")
    except MiadmarkError:
        return ""
    return value.strip() if isinstance(value, str) else ""


def export_one(instance: Dataset | bytes, decision: Decision, **options) -> Outcome:
    return export_many([instance], decision, **options)[0]


def export_many(instances: Sequence[Dataset | bytes], decisions: Decision | Sequence[Decision], *,
                destination: str, signer: Identity | None, lesions: StudyLesions | None = None,
                device: str = "auto") -> list[Outcome]:
    """One outcome per instance (see the module docstring); never raises for one bad instance."""
    if isinstance(decisions, Decision):
        decisions = [decisions] * len(instances)
    if len(decisions) != len(instances):
        raise ValueError("export_many needs one decision per instance")
    outcomes: list[Outcome | None] = [None] * len(instances)
    to_protect: dict[tuple, list[tuple[int, Dataset]]] = {}
    for i, (instance, decision) in enumerate(zip(instances, decisions)):
        ds = instance
        if not isinstance(instance, Dataset):
            try:
                ds = dataset_from_bytes(bytes(instance))
            except Exception as exc:  # noqa: BLE001 - one bad file fails alone
                outcomes[i] = refusal("unreadable", exc)
                continue
        uid = source_uid_of(ds)
        if decision.action == BLOCK:
            outcomes[i] = Refused(f"blocked: {decision.reason}", uid, blocked=True)
        elif decision.action == PASS:
            outcomes[i] = Forwarded(ds, uid)
        else:
            try:
                kind = lesion_kind(ds)
            except Exception as exc:  # noqa: BLE001 - a header that does not read: this object alone
                outcomes[i] = refusal("not exported", exc, uid)
                continue
            if kind is not None:
                outcomes[i] = _lesion_source(ds, uid, decision, destination=destination, signer=signer)
            else:
                to_protect.setdefault(_protect_key(decision), []).append((i, ds))
    for key, items in to_protect.items():
        results = _protect([ds for _, ds in items], key, destination=destination, signer=signer, lesions=lesions,
                           device=device)
        for (i, _), result in zip(items, results):
            outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def _protect_key(decision: Decision) -> tuple:
    return (tuple(str(p) for p in decision.recipients), decision.profile, decision.deidentify,
            decision.restore_identity, decision.deidentify_dates)


def _lesion_source(ds: Dataset, uid: str, decision: Decision, *, destination: str,
                   signer: Identity | None) -> Forwarded | Refused:
    """Not watermarked: as given, or de-identified with the study's keyed mapping (never with the identity
    the route removes)."""
    if decision.deidentify is None:
        return Forwarded(ds, uid, lesion_source=True)
    from .deid import deidentify
    try:
        if signer is None:
            raise MiadmarkError("no identity configured to key the de-identification")
        clean = deidentify(ds, signer=signer, recipients=loaded.certificates(list(map(str, decision.recipients))),
                           destination=destination, profile=decision.deidentify, dates=decision.deidentify_dates)
    except Exception as exc:  # noqa: BLE001 - fail closed: never sent identified
        return refusal("cannot de-identify the lesion source", exc, uid)
    return Forwarded(clean, uid, lesion_source=True, deidentified=True)


def _protect(datasets: list[Dataset], key: tuple, *, destination: str, signer: Identity | None,
             lesions: StudyLesions | None, device: str) -> list[Protected | Refused]:
    from .engine import DEFAULT_PROFILE
    from .protect import protect_many

    recipients, profile, deidentify, restore_identity, deidentify_dates = key
    uids = [source_uid_of(ds) for ds in datasets]
    try:
        if signer is None:
            raise MiadmarkError("no identity configured to sign protected objects")
        certificates = loaded.certificates(list(recipients))
        engine = loaded.engine(profile or DEFAULT_PROFILE, device)
    except Exception as exc:  # noqa: BLE001 - configuration: every image alike
        return [refusal("protect refused", exc, uid) for uid in uids]
    try:
        masks = (lesions or StudyLesions()).masks_for(datasets)
    except Exception as exc:  # noqa: BLE001 - lesion masks that do not place: not protected without them
        return [refusal("lesion masks", exc, uid) for uid in uids]
    options = dict(recipients=certificates, signer=signer, profile=profile or DEFAULT_PROFILE, device=device,
                   engine=engine, destination=destination, deidentify=deidentify,
                   restore_identity=restore_identity, deidentify_dates=deidentify_dates)
    try:
        results = protect_many(datasets, lesion_masks=masks, **options)
    except Exception as exc:  # noqa: BLE001 - the batch failed as a whole: each alone, so only the bad one fails
        if len(datasets) == 1:
            results = [exc]
        else:
            results = []
            for ds, mask in zip(datasets, masks):
                try:
                    results.append(protect_many([ds], lesion_masks=[mask], **options)[0])
                except Exception as one:  # noqa: BLE001
                    results.append(one)
    return [refusal("protect refused", result, uid) if isinstance(result, BaseException)
            else Protected(result, uid, lesion_masked=mask is not None, deidentified=deidentify is not None)
            for result, uid, mask in zip(results, uids, masks)]
