"""Exports from Orthanc through the routing rules: plan (decide per instance), then send.

A target is an Orthanc modality, peer or DICOMweb server. The destination that names it in
miadmark.yaml decides, instance by instance, with miadmark.rules.decide:
  pass    -> Orthanc's own route (orthanc.RestApiPost reaches the core route, not our override)
  protect -> miadmark.protect.protect_many, then the protected bytes go straight to the target
             (store-straight for modalities and peers, STOW-RS for DICOMweb); they are never
             stored in this Orthanc and the raw instance never leaves. The lesion masks of the
             SEG / RTSTRUCT objects Orthanc holds for the images' studies keep the watermark off
             the lesions (lesions.py); a SEG / RTSTRUCT itself carries no image and goes unchanged,
             by Orthanc's own route, before the images.
  block   -> the whole export is refused before anything is sent.
Runs on a Worker thread (big stack), never on an Orthanc callback thread.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import orthanc
import pydicom

from miadmark.config import Config
from miadmark.dicomio import dataset_from_bytes
from miadmark.lesion import is_lesion_source, mask_for, masks_of_sources
from miadmark.rules import BLOCK, PASS, PROTECT, Decision, _match, decide

from .bodies import ExportRequest
from .jobs import Job
from .lesions import lesion_sources_of
from .stow import StowServer, stow

KINDS = {"modality": "orthanc_modality", "peer": "orthanc_peer", "dicomweb": "orthanc_dicomweb"}
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
    decisions: list[tuple[str, Decision]] = field(default_factory=list)
    sop_classes: set[str] = field(default_factory=set)
    skipped: int = 0  # blocked instances left out (auto-export only)
    lesion_sources: dict[str, str] = field(default_factory=dict)  # Orthanc ID -> SOP Instance UID (SEG/RTSTRUCT)
    studies: set[str] = field(default_factory=set)  # Study Instance UIDs of the images to protect

    def ids(self, action: str) -> list[str]:
        return [iid for iid, d in self.decisions if d.action == action]

    def unchanged(self) -> list[str]:
        """SEG / RTSTRUCT on a protect route: no image to watermark, they go as they are."""
        return [iid for iid in self.ids(PROTECT) if iid in self.lesion_sources]

    def protect_groups(self) -> "OrderedDict[tuple, list[str]]":
        groups: OrderedDict[tuple, list[str]] = OrderedDict()
        for iid, d in self.decisions:
            if d.action == PROTECT and iid not in self.lesion_sources:
                groups.setdefault((d.recipients, d.profile), []).append(iid)
        return groups

    def describe(self) -> dict:
        reasons = sorted({d.reason for _, d in self.decisions})
        unchanged = len(self.unchanged())
        return {"Target": self.target.label, "Destination": self.destination,
                "Protect": len(self.ids(PROTECT)) - unchanged, "LesionSourcesUnchanged": unchanged,
                "Pass": len(self.ids(PASS)), "BlockedSkipped": self.skipped, "Rules": reasons[:10]}


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
        if not _match(rule, None, unknown_matches=True, **kwargs)[0]:
            continue
        if rule.action != PASS:
            return False
        if _match(rule, None, unknown_matches=False, **kwargs)[0]:
            return True
    return False


# ---------------------------------------------------------------------------------- plan and run

def plan_export(cfg: Config | None, target: Target, resources: list[str] | tuple[str, ...], *,
                skip_blocked: bool = False) -> Plan:
    """Decide every instance; raise Blocked if any is blocked (nothing is sent then), or with
    skip_blocked (auto-export) leave the blocked ones out (counted in plan.skipped)."""
    if cfg is None:
        raise Blocked("the MIAD-MARK configuration is not loaded: every export is blocked (see GET /miadmark/status)")
    destination = destination_for(cfg, target)
    if destination is None:
        raise Blocked(f"no destination in the MIAD-MARK configuration names Orthanc {target.label}: "
                      "exports to it are blocked")
    called = target_ae(target)
    calling = local_ae()
    plan = Plan(target, destination, called)
    seen = set()
    for resource in resources:
        for iid in instances_of(resource):
            if iid in seen:
                continue
            seen.add(iid)
            header = pydicom.dcmread(io.BytesIO(orthanc.GetDicomForInstance(iid)), stop_before_pixels=True)
            decision = decide(cfg, header, destination=destination, called_ae=called, calling_ae=calling)
            if decision.action == BLOCK:
                if skip_blocked:
                    plan.skipped += 1
                    continue
                raise Blocked(f"export to {destination} ({target.label}) blocked: {decision.reason}")
            plan.decisions.append((iid, decision))
            plan.sop_classes.add(str(header.get("SOPClassUID", "")))
            if decision.action == PROTECT:
                if is_lesion_source(header):
                    plan.lesion_sources[iid] = str(header.get("SOPInstanceUID", iid))
                else:
                    plan.studies.add(str(header.get("StudyInstanceUID", "")))
    if not plan.decisions and not plan.skipped:
        raise NotFound("no instances to send")
    return plan


def run_export(plan: Plan, request: ExportRequest | None, job: Job, *, signer, load_certs,
               device: str = "auto", batch: int = 8, engines: dict | None = None) -> None:
    """Send a planned export. Protected instances that fail are counted, never sent raw.
    Protection of batch n+1 overlaps the sending of batch n (one sender thread, 2 batches queued)."""
    from miadmark.engine import DEFAULT_PROFILE, get_engine  # heavy (torch): imported on first use
    from miadmark.protect import protect_many

    engines = {} if engines is None else engines  # profile -> engine, kept across jobs by the caller

    target = plan.target
    job.total = len(plan.decisions)
    job.result.update(plan.describe())
    sources, unreadable = lesion_sources_of(plan.studies) if plan.protect_groups() else ([], [])
    for iid, reason in unreadable:
        job.error(f"lesion source {iid} (Orthanc ID): unreadable ({reason}); images of its study are "
                  "protected without its mask")
    passed, unchanged = plan.ids(PASS), plan.unchanged()
    if passed or unchanged:  # lesion sources first: a receiver has the masks before the images
        _send_plain(target, unchanged + passed, request)
        job.done += len(passed) + len(unchanged)
    for iid in unchanged:
        orthanc.LogWarning(f"MIAD-MARK: {plan.lesion_sources[iid]} to {target.label}: "
                           "lesion source, forwarded unchanged")
    job.result["LesionSourcesForwardedUnchanged"] = [plan.lesion_sources[iid] for iid in unchanged]
    job.result["LesionSourcesUsed"] = [str(ds.get("SOPInstanceUID", "")) for ds in sources]
    masked, reported = 0, set()
    lock = threading.Lock()
    timings = {"read_s": 0.0, "protect_s": 0.0, "send_s": 0.0}
    counts = {"sent": 0}
    outbox: queue.Queue = queue.Queue(maxsize=2)

    def sender() -> None:
        delivery = None
        while (item := outbox.get()) is not None:
            ready, size = item
            t0 = time.perf_counter()
            try:
                delivery = delivery or make_sender(plan, request)
                sent, failures = delivery.send(ready)
            except Exception as exc:  # noqa: BLE001 - the sender must keep draining the queue
                sent, failures = 0, [f"protected instance for {uid}: not delivered ({exc})" for uid, _ in ready]
            with lock:
                timings["send_s"] += time.perf_counter() - t0
                counts["sent"] += sent
                job.failed += len(failures)
                for failure in failures:
                    job.error(failure)
                job.done += size
        if delivery is not None:
            try:
                delivery.close()
            except Exception:  # noqa: BLE001
                pass

    thread = threading.Thread(target=sender, name="miadmark-send", daemon=True)
    thread.start()
    try:
        for (recipients, profile), ids in plan.protect_groups().items():
            certs = load_certs(recipients)
            name = profile or DEFAULT_PROFILE
            if (name, device) not in engines:
                engines[(name, device)] = get_engine(name, device)
            for start in range(0, len(ids), batch):
                chunk = ids[start:start + batch]
                t0 = time.perf_counter()
                originals = [dataset_from_bytes(orthanc.GetDicomForInstance(iid)) for iid in chunk]
                lesion_masks = _lesion_masks(sources, originals, job, reported)
                masked += sum(mask is not None for mask in lesion_masks)
                t1 = time.perf_counter()
                results = protect_many(originals, recipients=certs, signer=signer, profile=name, device=device,
                                       lesion_masks=lesion_masks, engine=engines[(name, device)],
                                       destination=plan.destination)
                ready = []
                for iid, original, result in zip(chunk, originals, results):
                    uid = str(original.get("SOPInstanceUID", iid))
                    if isinstance(result, Exception):
                        with lock:
                            job.failed += 1
                            job.error(f"instance {uid}: not protected, not sent ({type(result).__name__}: {result})")
                    else:
                        ready.append((uid, result))
                with lock:
                    timings["read_s"] += t1 - t0
                    timings["protect_s"] += time.perf_counter() - t1
                outbox.put((ready, len(chunk)))
    finally:
        outbox.put(None)
        thread.join()
    job.result["ProtectedSent"] = counts["sent"]
    job.result["PassedSent"] = len(passed)
    job.result["LesionMasked"] = masked  # protected images that had a lesion mask
    job.result["Seconds"] = {k: round(v, 2) for k, v in timings.items()}


def _lesion_masks(sources: list, images: list, job: Job, reported: set[str]) -> list:
    """One mask (or None) per image from the study's SEG / RTSTRUCT; a source that gives none is a
    job error (once): its lesions may be under the watermark, as with `miadmark protect`."""
    if not sources:
        return [None] * len(images)
    masks, unusable = masks_of_sources(sources, images)
    for source, reason in unusable:
        uid = str(source.get("SOPInstanceUID", ""))
        if uid not in reported:
            reported.add(uid)
            job.error(f"lesion source {uid}: no mask ({reason}); images of its study are protected without it")
    return [mask_for(ds, masks) for ds in images]


def _send_plain(target: Target, ids: list[str], request: ExportRequest | None) -> None:
    """`pass`: the originals through Orthanc's own route, as an Orthanc job that is polled (a
    synchronous SDK call would hold the Python lock for the whole transfer)."""
    if target.kind == "dicomweb":
        server = stow_server(target.name)
        for start in range(0, len(ids), 16):
            stow(server, [orthanc.GetDicomForInstance(iid) for iid in ids[start:start + 16]])
        return
    body = json.loads(request.core_body(ids)) if request is not None else {"Resources": ids}
    body.pop("Synchronous", None)
    body["Asynchronous"] = True
    job = json.loads(orthanc.RestApiPost(CORE_ROUTES[target.kind].format(target.name), json.dumps(body)))
    while True:
        state = _get_json(f"/jobs/{job['ID']}")
        if state["State"] == "Success":
            return
        if state["State"] == "Failure":
            raise RuntimeError(f"Orthanc job {job['ID']} to {target.label} failed: {state.get('ErrorDescription')}")
        time.sleep(0.1)


def make_sender(plan: Plan, request: ExportRequest | None = None):
    """How protected objects reach the target (see senders.py: without the Python lock held).
    Honours the export's LocalAet and, for C-MOVE, the move originator."""
    from . import senders

    target = plan.target
    config = json.loads(orthanc.GetConfiguration())
    if target.kind == "dicomweb":
        return senders.StowSender(stow_server(target.name))
    if target.kind == "modality":
        conf = _get_json(f"/modalities/{target.name}/configuration")
        if conf.get("UseDicomTls"):
            return senders.SdkSender(f"/modalities/{target.name}/store-straight", orthanc.RestApiPost, target.label)
        timeout = float(conf.get("Timeout") or config.get("DicomScuTimeout") or 10)
        options = request.options if request is not None else {}
        return senders.DimseSender(called_ae=conf["AET"], host=conf["Host"], port=int(conf["Port"]),
                                   calling_ae=options.get("LocalAet") or conf.get("LocalAet") or local_ae(),
                                   sop_classes=plan.sop_classes, timeout_s=max(timeout, 30.0),
                                   originator=(options.get("MoveOriginatorAet"), options.get("MoveOriginatorID")))
    entry = senders.peer_entry(config, target.name)
    if entry is None or senders.needs_orthanc_client(entry):
        return senders.SdkSender(f"/peers/{target.name}/store-straight", orthanc.RestApiPost, target.label)
    return senders.HttpSender(target.name, entry["Url"], entry.get("Username"), entry.get("Password"),
                              dict(entry.get("HttpHeaders") or {}), float(entry.get("Timeout") or 60))


def stow_server(name: str) -> StowServer:
    servers = (json.loads(orthanc.GetConfiguration()).get("DicomWeb") or {}).get("Servers") or {}
    if name not in servers:
        raise NotFound(f"no DICOMweb server {name!r} in Orthanc's DicomWeb.Servers")
    return StowServer.from_orthanc(name, servers[name])


def load_certificates_cached(cache: dict):
    from miadmark.keys import load_certificates

    def load(paths: tuple[Path, ...]):
        key = tuple(str(p) for p in paths)
        if key not in cache:
            cache[key] = load_certificates(paths)
        return cache[key]
    return load
