"""Exports from Orthanc through the routing rules: the plan (a decision per instance).

A target is an Orthanc modality, peer or DICOMweb server. The destination that names it in
miadmark.yaml decides, instance by instance, with miadmark.rules.decide:
  pass    -> the original, through Orthanc's own route (delivery.py)
  protect -> the core's export step in delivery.py, sent straight to the target; never stored here,
             the raw image never leaves. A SEG / RTSTRUCT on a protect route (miadmark.lesion decides,
             from its SOP class and content) goes before the images, unchanged or de-identified as the
             route says; their watermark keeps off its lesions (lesions.py).
  block   -> the whole export is refused before anything is queued (auto-export: left out).
The plan's items go into the durable outbox (outbox.py); nothing is sent from here.
Runs on a Worker thread (big stack), never on an Orthanc callback thread.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pydicom

from miadmark.config import Config
from miadmark.lesion import guarded_value, lesion_kind
from miadmark.rules import BLOCK, PASS, PROTECT, decide, rule_matches

from .kinds import handlers
from .outbox import Item
from .sdk import orthanc

KINDS = {target: kind for kind, target in handlers("orthanc").items()}  # Orthanc target kind -> destination kind
CORE_ROUTES = {"modality": "/modalities/{}/store", "peer": "/peers/{}/store"}


class Blocked(Exception):
    """The rules refuse this export (HTTP 403)."""


class NotFound(Exception):
    """An unknown Orthanc resource or target (HTTP 404)."""


@dataclass(frozen=True)
class Target:
    kind: str  # modality | peer | dicomweb
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass
class Plan:
    target: Target
    destination: str
    called_ae: str | None
    calling_ae: str = ""
    items: list[Item] = field(default_factory=list)
    skipped: int = 0  # blocked instances left out (auto-export only)
    not_auto: int = 0  # decided by a rule that is not `auto` (auto-export only)
    already: int = 0  # this receipt was queued before (auto-export only)

    def ordered(self) -> list[Item]:
        """Lesion sources first, then clean originals, then images to protect: a receiver has the
        masks before the images (the queue sends in this order)."""
        return sorted(self.items, key=lambda i: (not i.lesion_source, i.action != PASS))

    def count(self, action: str) -> int:
        return sum(1 for i in self.items if i.action == action and not i.lesion_source)

    def describe(self) -> dict:
        reasons = sorted({i.rule for i in self.items})
        return {"Target": self.target.label, "Destination": self.destination,
                "Protect": self.count(PROTECT), "LesionSourcesUnchanged": sum(i.lesion_source for i in self.items),
                "Pass": self.count(PASS), "BlockedSkipped": self.skipped, "Rules": reasons[:10]}


# ---------------------------------------------------------------------------------- Orthanc lookups

def _get_json(uri: str):
    return json.loads(orthanc.RestApiGet(uri))


def target_ae(target: Target) -> str | None:
    if target.kind != "modality":
        return None
    try:
        return str(_get_json(f"/modalities/{target.name}/configuration")["AET"])
    except Exception:  # noqa: BLE001 - unknown modality
        raise NotFound(f"Orthanc has no DICOM modality named {target.name!r}") from None


def local_ae() -> str:
    return str(json.loads(orthanc.GetConfiguration()).get("DicomAet", "ORTHANC"))


def instances_of(resource: str) -> list[str]:
    for level in ("instances", "series", "studies", "patients"):
        try:
            orthanc.RestApiGet(f"/{level}/{resource}")
        except Exception:  # noqa: BLE001 - not at this level
            continue
        if level == "instances":
            return [resource]
        return [item["ID"] for item in _get_json(f"/{level}/{resource}/instances")]
    raise NotFound(f"no Orthanc resource {resource!r}")


def destination_for(cfg: Config, target: Target) -> str | None:
    key = KINDS[target.kind]
    named = [(n, d) for n, d in cfg.destinations.items() if d.kind == key]
    for name, dest in named:
        if dest.target == target.name:
            return name
    for name, dest in named:  # Orthanc's symbolic names are matched without case as a fallback
        if dest.target.lower() == target.name.lower():
            return name
    return None


def target_of(cfg: Config, destination: str) -> Target:
    dest = cfg.destinations.get(destination)
    if dest is None:
        raise NotFound(f"no destination {destination!r} in the configuration")
    for kind, key in KINDS.items():
        if dest.kind == key:
            return Target(kind, dest.target)
    raise NotFound(f"destination {destination!r} is not an Orthanc target (use orthanc_modality, "
                   "orthanc_peer or orthanc_dicomweb)")


def raw_export_allowed(cfg: Config | None, target: Target, called_ae: str | None, calling_ae: str | None) -> bool:
    """May raw bytes go to this target without looking at them (store-straight and the like)?
    Only when the first rule that could apply is an unconditional `pass`."""
    if cfg is None:
        return False
    destination = destination_for(cfg, target)
    if destination is None:
        return False
    for rule in cfg.rules:
        if rule.send_to is not None and destination not in rule.send_to:
            continue
        kwargs = dict(destination=destination, called_ae=called_ae, calling_ae=calling_ae)
        if not rule_matches(rule, None, unknown_matches=True, **kwargs)[0]:
            continue
        if rule.action != PASS:
            return False
        if rule_matches(rule, None, unknown_matches=False, **kwargs)[0]:
            return True
    return False


# ---------------------------------------------------------------------------------- plan

def reception_date(iid: str) -> str:
    """Orthanc's ReceptionDate of an instance: a study deleted and received again gets a new one."""
    try:
        value = orthanc.RestApiGet(f"/instances/{iid}/metadata/ReceptionDate")
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:  # noqa: BLE001 - older Orthanc: no metadata, one receipt per ID
        return ""


def plan_export(cfg: Config | None, target: Target, resources: list[str] | tuple[str, ...], *,
                skip_blocked: bool = False, auto: bool = False, already_queued=None) -> Plan:
    """Decide every instance with miadmark.rules.decide; raise Blocked if any is blocked (nothing is
    sent then), or with skip_blocked (auto-export) leave the blocked ones out (plan.skipped).
    auto: keep only instances whose deciding rule is an `auto` rule (its `when` matched them), and
    leave out those already_queued(instance, destination, received) says were queued before."""
    if cfg is None:
        raise Blocked("the MIAD-MARK configuration is not loaded: every export is blocked (see GET /miadmark/status)")
    destination = destination_for(cfg, target)
    if destination is None:
        raise Blocked(f"no destination in the MIAD-MARK configuration names Orthanc {target.label}: "
                      "exports to it are blocked")
    called = target_ae(target)
    calling = local_ae()
    plan = Plan(target, destination, called, calling)
    seen = set()
    for resource in resources:
        for iid in instances_of(resource):
            if iid in seen:
                continue
            seen.add(iid)
            received = reception_date(iid)
            if already_queued is not None and already_queued(iid, destination, received):
                plan.already += 1
                continue
            header = pydicom.dcmread(io.BytesIO(orthanc.GetDicomForInstance(iid)), stop_before_pixels=True)
            decision = decide(cfg, header, destination=destination, called_ae=called, calling_ae=calling)
            if auto and (decision.rule_index is None or not cfg.rules[decision.rule_index].auto):
                plan.not_auto += 1  # the rule deciding for this instance is not an auto rule
                continue
            if decision.action == BLOCK:
                if skip_blocked:
                    plan.skipped += 1
                    continue
                raise Blocked(f"export to {destination} ({target.label}) blocked: {decision.reason}")
            meta = getattr(header, "file_meta", None)
            plan.items.append(Item(
                instance=iid, received=received, sop_uid=_text(header, "SOPInstanceUID") or iid,
                sop_class=_text(header, "SOPClassUID"),
                transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") if meta is not None else ""),
                study_uid=_text(header, "StudyInstanceUID"), series_uid=_text(header, "SeriesInstanceUID"),
                action=decision.action, rule=decision.reason[:200],
                recipients=tuple(str(p) for p in decision.recipients), profile=decision.profile,
                lesion_source=decision.action == PROTECT and _lesion_source(header)))
    if not plan.items and not plan.skipped and not auto:
        raise NotFound("no instances to send")
    return plan


def _text(header, keyword: str) -> str:
    """A header value for the plan ('' when it does not read: that instance then fails alone, named, at
    delivery, instead of the whole export here)."""
    try:
        value = guarded_value(header, keyword, "")
    except Exception:  # noqa: BLE001 - see above
        return ""
    return value.strip() if isinstance(value, str) else ""


def _lesion_source(header) -> bool:
    """Only orders the plan (lesion sources first); delivery's export step decides again on the content."""
    try:
        return lesion_kind(header) is not None
    except Exception:  # noqa: BLE001 - refused at delivery, with its reason
        return False
