"""The plugin inside Orthanc: configuration, callbacks and REST routes.

Orthanc callbacks do no heavy work here: they parse the request, then wait on (or hand back
a job of) a `Worker` thread with a big stack. Everything fails closed: an export the plugin
cannot decide is refused; an incoming instance it cannot handle is quarantined, not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import traceback
from collections import OrderedDict
from pathlib import Path

import orthanc

from miadmark.config import Config, ConfigError, load_config
from miadmark.keys import load_identity, read_passphrase

from . import exports
from .bodies import BadRequest, parse_export_body, parse_protect_body
from .exports import Blocked, NotFound, Target
from .jobs import JOB_PREFIX, Job, Worker

PLAN_TIMEOUT_S = 600
RETRY_S = 5.0  # a configuration that did not load is retried this often (on use)
HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    orthanc.LogWarning(f"MIAD-MARK: {message}")


# ------------------------------------------------------------------------------------------ settings

class Settings:
    """The YAML named by Orthanc's "MiadMark": {"Config": ...}; reloaded when the file changes.
    A bad file keeps the running configuration (or none: then every export is blocked)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.config: Config | None = None
        self.error: str | None = None
        self.identity = None
        self.receiver = None
        self.receiver_error: str | None = None
        self.certs: dict = {}
        self.engines: dict = {}  # (profile, device) -> engine (surrogates loaded once)
        self.on_reload = lambda: None
        self._mtime: float | None = None
        self._tried = 0.0
        self._lock = threading.Lock()

    def current(self) -> Config | None:
        with self._lock:
            if self.path is None:
                self.error = 'no "MiadMark": {"Config": "..."} in the Orthanc configuration'
                return None
            try:
                mtime = self.path.stat().st_mtime
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror}"
                return self.config
            retry = self.config is None and time.monotonic() - self._tried > RETRY_S  # e.g. keys made since
            if mtime != self._mtime or retry:
                self._mtime, self._tried = mtime, time.monotonic()
                self._load()
            return self.config

    def _load(self) -> None:
        from .receiver import Receiver

        try:
            cfg = load_config(self.path)
            identity = None
            if cfg.identity is not None:
                identity = load_identity(cfg.identity.key, cfg.identity.cert,
                                         read_passphrase(cfg.identity.passphrase_file))
        except (ConfigError, Exception) as exc:  # noqa: BLE001 - keep the running configuration
            self.error = str(exc)
            log(f"configuration not (re)loaded, keeping the previous one: {exc}")
            return
        receiver, receiver_error = None, None
        if cfg.receiver is not None:
            try:
                receiver = Receiver(cfg.receiver)
                receiver_error = receiver.error
            except Exception as exc:  # noqa: BLE001
                receiver_error = str(exc)
            if receiver_error:
                log(f"receiver keys not loaded (protected instances will be quarantined): {receiver_error}")
        self.config, self.identity, self.error = cfg, identity, None
        self.receiver, self.receiver_error = receiver, receiver_error
        self.certs, self.engines = {}, {}
        self.on_reload()
        log(f"configuration loaded from {self.path}: {len(cfg.destinations)} destinations, {len(cfg.rules)} rules"
            + (", receiver on" if receiver else ""))

    def option(self, name: str, default):
        cfg = self.config
        return (cfg.orthanc or {}).get(name, default) if cfg is not None else default


def config_path() -> Path | None:
    section = json.loads(orthanc.GetConfiguration()).get("MiadMark") or {}
    value = os.environ.get("MIADMARK_CONFIG") or section.get("Config")
    if not value:
        return None
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return path
    candidates = [Path.cwd() / path]
    try:
        orthanc_config = Path(orthanc.GetConfigurationPath())
        candidates.append((orthanc_config if orthanc_config.is_dir() else orthanc_config.parent) / path)
    except Exception:  # noqa: BLE001 - older SDKs
        pass
    return next((c for c in candidates if c.exists()), candidates[0])


# ------------------------------------------------------------------------------------------ state

class Plugin:
    def __init__(self):
        self.settings = Settings(config_path())
        self.control = Worker("control", log=log)  # plans and small decisions
        self.exporter = Worker("export", log=log)  # protect + send, one job at a time
        self.ingest = Worker("ingest", log=log)  # strip on ingestion
        self.passer = Worker("pass", log=log)  # clean exports (Orthanc jobs, polled)
        self.auto_sent: dict[str, set[str]] = {}
        self.warnings: set[str] = set()
        self.started = False
        self.settings.on_reload = lambda: self.started and self.control.post(self.close_c_get)
        self.settings.current()

    # ----------------------------------------------------------- exports

    def start_export(self, target: Target, request, kind: str = "MiadmarkExport") -> tuple[Job, exports.Plan]:
        cfg = self.settings.current()
        plan = self.control.call(exports.plan_export, cfg, target, request.resources, timeout=PLAN_TIMEOUT_S)
        job = Job(kind, f"export of {len(plan.decisions)} instances to {plan.destination} ({target.label})")
        # clean-only exports do not wait behind a long protect job
        worker = self.exporter if plan.ids("protect") else self.passer
        return worker.submit(job, lambda j: self._run(plan, request, j)), plan

    def _run(self, plan, request, job) -> None:
        exports.run_export(plan, request, job, signer=self.settings.identity,
                           load_certs=exports.load_certificates_cached(self.settings.certs),
                           device=str(self.settings.option("device", "auto")),
                           batch=int(self.settings.option("batch_size", 8)), engines=self.settings.engines)
        log(f"job {job.id}: {job.description}: {job.done - job.failed} sent, {job.failed} failed "
            f"({job.result.get('Protect', 0)} protect, {job.result.get('Pass', 0)} pass)")

    def auto_export(self, study: str) -> None:
        cfg = self.settings.current()
        if cfg is None:
            return
        names: list[str] = []
        for rule in cfg.rules:
            if rule.auto and rule.action != "block":
                names += [n for n in rule.send_to or [] if n not in names]
        for name in names:
            try:
                target = exports.target_of(cfg, name)
            except NotFound as exc:
                log(f"auto-export of study {study}: {exc}")
                continue
            job = Job("MiadmarkAutoExport", f"auto-export of study {study} to {name} ({target.label})")
            self.exporter.submit(job, lambda j, t=target, n=name: self._auto(study, t, n, j))

    def _auto(self, study: str, target: Target, name: str, job: Job) -> None:
        plan = exports.plan_export(self.settings.current(), target, [study], skip_blocked=True)
        if plan.skipped:
            log(f"auto-export of study {study} to {name}: {plan.skipped} instances left out (blocked by the rules)")
        sent = self.auto_sent.setdefault(name, set())
        before = len(plan.decisions)
        plan.decisions = [(iid, d) for iid, d in plan.decisions if iid not in sent]
        if not plan.decisions:
            return
        late = [plan.lesion_sources[iid] for iid in plan.unchanged()]
        if late and len(plan.decisions) < before:  # see lesions.py: the ordering limit
            log(f"auto-export of study {study} to {name}: lesion source(s) {', '.join(late)} arrived after "
                f"{before - len(plan.decisions)} instance(s) of the study were sent; images among them were "
                "protected without their masks")
        self._run(plan, None, job)
        if not job.failed:
            sent.update(iid for iid, _ in plan.decisions)

    def close_c_get(self) -> None:
        """C-GET hands instances to the caller, raw, with no plugin hook: turn AllowGet off for every
        modality the rules do not pass clean unconditionally (also done after each reload)."""
        cfg = self.settings.current()
        config = json.loads(orthanc.GetConfiguration())
        if config.get("DicomAlwaysAllowGet"):
            self.warnings.add('"DicomAlwaysAllowGet": true lets any AE C-GET raw instances: set it to false')
        if config.get("ExecuteLuaEnabled") or config.get("LuaScripts"):
            self.warnings.add("Lua scripts (LuaScripts, /tools/execute-script) can send raw instances outside "
                              "the routing rules: remove them or make sure they do not export")
        calling = exports.local_ae()
        for name, modality in json.loads(orthanc.RestApiGet("/modalities?expand")).items():
            if not modality.get("AllowGet"):
                continue
            aet = modality.get("AET")
            if exports.raw_export_allowed(cfg, Target("modality", name), aet, calling):
                continue
            orthanc.RestApiPut(f"/modalities/{name}", json.dumps({**modality, "AllowGet": False}))
            log(f"C-GET from modality {name!r} turned off: it would receive raw instances outside the rules")

    def job(self, job_id: str) -> Job | None:
        return self.exporter.get(job_id) or self.passer.get(job_id)

    def status(self) -> dict:
        s = self.settings
        cfg = s.current()
        jobs = sorted(self.exporter.jobs() + self.passer.jobs(), key=lambda j: j.created)
        receiver = s.receiver
        return {
            "Config": str(s.path) if s.path else None,
            "Loaded": cfg is not None,
            "Error": s.error,
            "Warnings": sorted(self.warnings),
            "Destinations": {n: {"Kind": d.kind, "Target": d.target}
                             for n, d in (cfg.destinations.items() if cfg else [])},
            "Rules": len(cfg.rules) if cfg else 0,
            "Receiver": ({"Counts": dict(receiver.counts), "Quarantine": str(receiver.quarantine_dir),
                          "Error": receiver.error}
                         if receiver else ({"Error": s.receiver_error} if s.receiver_error else None)),
            "Queue": self.exporter.pending(),
            "Running": [j.summary() for j in jobs if j.state == "Running"],
            "Failed": [j.summary() for j in jobs if j.state == "Failure"][-20:],
            "Recent": [{"ID": j.id, "State": j.state, "Description": j.description} for j in jobs[-20:]],
        }


PLUGIN: Plugin | None = None


# ------------------------------------------------------------------------------------------ REST

def _answer(output, value, status: int = 200) -> None:
    body = json.dumps(value, indent=2)
    if status == 200:
        output.AnswerBuffer(body.encode(), "application/json")
    else:
        output.SendHttpStatus(status, body, len(body))  # the body is shown when HttpDescribeErrors is on


def _rest(fn, methods=("POST",)):
    def handler(output, uri, **request):
        if request.get("method") not in methods:
            output.SendMethodNotAllowed(",".join(methods))
            return
        try:
            fn(output, uri, **request)
        except BadRequest as exc:
            _answer(output, {"Error": "Bad request", "Details": str(exc)}, 400)
        except Blocked as exc:
            log(f"refused {request.get('method')} {uri}: {exc}")
            _answer(output, {"Error": "Blocked by MIAD-MARK routing rules", "Details": str(exc)}, 403)
        except NotFound as exc:
            _answer(output, {"Error": "Not found", "Details": str(exc)}, 404)
        except Exception as exc:  # noqa: BLE001 - never let an exception reach Orthanc's HTTP thread
            log(f"error in {uri}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
            _answer(output, {"Error": "MIAD-MARK internal error", "Details": f"{type(exc).__name__}: {exc}"}, 500)
    return handler


ORDER_PROBE = "miadmark-order-probe"


def _export_route(kind: str):
    def route(output, uri, **request):
        target = Target(kind, request["groups"][0])
        if target.name == ORDER_PROBE:
            _answer(output, {"MiadMarkOverride": True})
            return
        body = parse_export_body(request.get("body"))
        job, plan = PLUGIN.start_export(target, body)
        if not body.synchronous:
            _answer(output, {"ID": job.id, "Path": f"/jobs/{job.id}"})
            return
        job.wait()
        summary = job.summary()
        answer = {"Description": "REST API through MIAD-MARK", "InstancesCount": job.total,
                  "FailedInstancesCount": job.failed, "ParentResources": list(body.resources),
                  "RemoteAet": plan.called_ae, "MiadMark": summary}
        _answer(output, answer, 200 if job.state == "Success" else 500)
    return route


def _protect_route(output, uri, **request):
    resource, destination, synchronous = parse_protect_body(request.get("body"))
    cfg = PLUGIN.settings.current()
    if cfg is None:
        raise Blocked("the MIAD-MARK configuration is not loaded")
    target = exports.target_of(cfg, destination)
    job, _ = PLUGIN.start_export(target, parse_export_body(json.dumps([resource])), kind="MiadmarkProtect")
    if synchronous:
        job.wait()
    _answer(output, {"ID": job.id, "Path": f"/jobs/{job.id}", "State": job.state})


def _status_route(output, uri, **request):
    _answer(output, PLUGIN.status())


def _destinations_route(output, uri, **request):
    cfg = PLUGIN.settings.current()
    _answer(output, [{"Name": n, "Kind": d.kind, "Target": d.target}
                     for n, d in (cfg.destinations.items() if cfg else [])
                     if d.kind in exports.KINDS.values()])


def _job_route(output, uri, **request):
    job = PLUGIN.job(request["groups"][0])
    if job is None:
        raise NotFound(f"no MIAD-MARK job {request['groups'][0]}")
    _answer(output, job.summary())


# ------------------------------------------------------------------------------------------ filters

RAW_ROUTES = re.compile(r"^/(modalities|peers)/([^/]+)/store-straight/?$|^/dicom-web/servers/([^/]+)/(post|stow)/?$")
_STOW_OVERRIDE: list[bool] = []


def stow_override_first() -> bool:
    """Does our /dicom-web/servers/{name}/stow reach the request before the DICOMweb plugin's?
    (The first plugin loaded wins; list libOrthancPython.so before libOrthancDicomWeb.so.)
    Checked once through the plugins' router with a probe name."""
    if not _STOW_OVERRIDE:
        try:
            answer = json.loads(orthanc.RestApiPostAfterPlugins(f"/dicom-web/servers/{ORDER_PROBE}/stow", "{}"))
            first = bool(answer.get("MiadMarkOverride"))
        except Exception:  # noqa: BLE001 - the DICOMweb plugin answered (unknown server)
            first = False
        _STOW_OVERRIDE.append(first)
        if not first:
            log("the DICOMweb plugin is loaded before this plugin: its /dicom-web/servers/{name}/stow is refused "
                "for protect/block destinations; list libOrthancPython.so first in \"Plugins\" "
                "or use POST /miadmark/protect")
    return _STOW_OVERRIDE[0]


def http_filter(uri, **request) -> bool:
    """Refuse raw export routes (store-straight, DICOMweb 'post') to targets whose rules are not an
    unconditional pass. Fail closed: an error here refuses the request."""
    try:
        if request.get("method") != orthanc.HttpMethod.POST:
            return True
        m = RAW_ROUTES.match(uri)
        if not m:
            return True
        if m.group(4) == "stow" and (m.group(3) == ORDER_PROBE or stow_override_first()):
            return True  # our override handles it: it goes through the rules
        target = (Target("modality" if m.group(1) == "modalities" else "peer", m.group(2)) if m.group(1)
                  else Target("dicomweb", m.group(3)))
        called = exports.target_ae(target) if target.kind == "modality" else None
        allowed = exports.raw_export_allowed(PLUGIN.settings.current(), target, called, exports.local_ae())
        if not allowed:
            log(f"refused POST {uri}: raw bytes to {target.label} would bypass the routing rules "
                "(use /store, which goes through them)")
        return allowed
    except Exception as exc:  # noqa: BLE001
        log(f"refused POST {uri}: filter error {type(exc).__name__}: {exc}")
        return False


REFUSED_STATUS = 0x0110  # the one generic C-STORE failure a receiver answers (as dicom_node does)
_REFUSED: "OrderedDict[str, float]" = OrderedDict()  # sha256 of instances to refuse in the C-STORE filter
_REFUSED_LOCK = threading.Lock()


def _refuse(data: bytes, origin):
    """Not stored. Over DICOM, Orthanc 1.10 answers a DISCARD with success (checked): instead keep it
    here and let the C-STORE filter, which Orthanc calls right after this callback with the same
    bytes (checked), answer one generic failure status and drop it. Elsewhere (REST): DISCARD."""
    if origin == orthanc.InstanceOrigin.DICOM_PROTOCOL:
        with _REFUSED_LOCK:
            _REFUSED[hashlib.sha256(data).hexdigest()] = time.time()
            while len(_REFUSED) > 1000:
                _REFUSED.popitem(last=False)
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    return orthanc.ReceivedInstanceAction.DISCARD, None


def cstore_filter(instance) -> int:
    """IncomingCStoreInstanceFilter: refuse what received_instance marked (0 = accept)."""
    if not _REFUSED:
        return 0
    try:
        digest = hashlib.sha256(instance.GetInstanceData()).hexdigest()
    except Exception:  # noqa: BLE001 - fail closed while a refusal is pending
        return REFUSED_STATUS
    with _REFUSED_LOCK:
        return REFUSED_STATUS if _REFUSED.pop(digest, None) is not None else 0


def received_instance(data: bytes, origin):
    """ReceivedInstanceCallback: strip protected instances; an exception here would store the
    instance as received, so everything is caught and the instance refused."""
    from .receiver import KEEP, MODIFY, might_be_protected

    try:
        settings = PLUGIN.settings
        settings.current()
        receiver = settings.receiver
        if receiver is None:
            if settings.config is not None and settings.config.receiver is None:
                return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None  # not a receiving site
            if not might_be_protected(data):
                return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
            log("protected instance refused: the receiver is not loaded (" + str(settings.receiver_error
                or settings.error) + ")")
            return _refuse(data, origin)
        if not might_be_protected(data) and receiver.config.plain == "store":
            receiver.counts["plain"] += 1
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        action, out = PLUGIN.ingest.call(receiver.process, data, str(origin), timeout=PLAN_TIMEOUT_S)
        if action == MODIFY:
            return orthanc.ReceivedInstanceAction.MODIFY, out
        if action == KEEP:
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        return _refuse(data, origin)
    except BaseException as exc:  # noqa: BLE001 - fail closed
        try:
            log(f"incoming instance refused: {type(exc).__name__}: {exc}")
        finally:
            return orthanc.ReceivedInstanceAction.DISCARD, None  # noqa: B012


def on_move(**request) -> None:
    """C-MOVE SCP: a modality asks this Orthanc to send to a move destination. The same rules as
    the REST export routes apply; raising makes Orthanc answer the C-MOVE with a failure."""
    target_aet = str(request.get("TargetAET") or "").strip()
    modalities = json.loads(orthanc.RestApiGet("/modalities?expand"))
    name = next((n for n, m in modalities.items() if str(m.get("AET", "")).strip() == target_aet), None)
    if name is None:
        raise RuntimeError(f"C-MOVE to unknown AE {target_aet!r}")
    ids = _move_resources(request)
    if not ids:
        raise RuntimeError("C-MOVE: nothing matches")
    options = {k: request[v] for k, v in (("MoveOriginatorAet", "OriginatorAET"), ("MoveOriginatorID", "OriginatorID"))
               if request.get(v) not in (None, "")}
    body = parse_export_body(json.dumps({"Resources": ids, **options}))
    try:
        job, _ = PLUGIN.start_export(Target("modality", name), body, kind="MiadmarkMove")
    except (Blocked, NotFound) as exc:
        log(f"refused C-MOVE from {request.get('OriginatorAET')} to {target_aet}: {exc}")
        raise RuntimeError("C-MOVE refused by the MIAD-MARK routing rules") from None
    job.wait()
    if job.state != "Success":
        raise RuntimeError(f"C-MOVE to {target_aet}: {job.failed} instances failed")


def _move_resources(request) -> list[str]:
    level = str(request.get("Level") or "STUDY").upper()
    key, lookup = {"PATIENT": ("PatientID", orthanc.LookupPatient), "STUDY": ("StudyInstanceUID", orthanc.LookupStudy),
                   "SERIES": ("SeriesInstanceUID", orthanc.LookupSeries),
                   "INSTANCE": ("SOPInstanceUID", orthanc.LookupInstance),
                   "IMAGE": ("SOPInstanceUID", orthanc.LookupInstance)}[level]
    ids = []
    for value in str(request.get(key) or "").split("\\"):
        if value.strip():
            try:
                ids.append(lookup(value.strip()))
            except Exception:  # noqa: BLE001 - unknown UID: nothing to send for it
                pass
    return ids


def on_change(change_type, level, resource) -> None:
    try:
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            PLUGIN.auto_export(resource)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            PLUGIN.started = True
            PLUGIN.control.call(PLUGIN.close_c_get, timeout=60)
    except Exception as exc:  # noqa: BLE001
        log(f"auto-export of study {resource} not scheduled: {exc}")


# ------------------------------------------------------------------------------------------ install

def install() -> None:
    global PLUGIN
    PLUGIN = Plugin()
    for pattern, kind in (("/modalities/([^/]+)/store", "modality"), ("/peers/([^/]+)/store", "peer"),
                          ("/dicom-web/servers/([^/]+)/stow", "dicomweb")):
        orthanc.RegisterRestCallback(pattern, _rest(_export_route(kind)))
    orthanc.RegisterRestCallback("/miadmark/status", _rest(_status_route, ("GET",)))
    orthanc.RegisterRestCallback("/miadmark/destinations", _rest(_destinations_route, ("GET",)))
    orthanc.RegisterRestCallback("/miadmark/protect", _rest(_protect_route))
    orthanc.RegisterRestCallback("/miadmark/jobs/([^/]+)", _rest(_job_route, ("GET",)))
    orthanc.RegisterRestCallback(f"/jobs/({JOB_PREFIX}[0-9a-f-]+)", _rest(_job_route, ("GET",)))
    orthanc.RegisterIncomingHttpRequestFilter(http_filter)
    orthanc.RegisterReceivedInstanceCallback(received_instance)
    orthanc.RegisterIncomingCStoreInstanceFilter(cstore_filter)
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterMoveCallback(on_move)  # C-MOVE SCP: moves to a target go through the rules too
    orthanc.ExtendOrthancExplorer((HERE / "explorer.js").read_text(encoding="utf-8"))
    __import__("orthanc_plugin.monitoring").monitoring.register()  # /miadmark/metrics, /miadmark/status-page
    log(f"plugin ready (config {PLUGIN.settings.path}, {'loaded' if PLUGIN.settings.config else 'NOT loaded: '}"
        f"{PLUGIN.settings.error or ''})")
