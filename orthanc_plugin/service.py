"""The plugin's state inside Orthanc: settings, the durable outbox and its delivery thread, and the
Orthanc events (stable study, start-up, C-MOVE) that queue exports.

Every export is planned (decided per instance by the rules) on the control worker, written to the
outbox in one transaction, and delivered by the delivery thread (delivery.py). Nothing an export
needs lives only in memory: after a crash or kill -9, the rows still pending are sent on start-up,
and studies that became stable while Orthanc was down are looked at again (catch_up).
"""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

from . import exports
from .bodies import ExportRequest, parse_export_body
from .delivery import Delivery
from .exports import Blocked, NotFound, Plan, Target
from .jobs import Worker, finished, summary
from .outbox import Outbox
from .sdk import orthanc
from .settings import Settings, config_path, log

PLAN_TIMEOUT_S = 600
AUTO_KIND = "MiadmarkAutoExport"


def outbox_path(settings: Settings) -> Path:
    """`orthanc: {outbox: path}` in miadmark.yaml, else <StorageDirectory>/miadmark/exports.sqlite."""
    configured = settings.option("outbox", None)
    if configured:
        path = Path(str(configured)).expanduser()
        return path if path.is_absolute() or settings.path is None else settings.path.parent / path
    storage = json.loads(orthanc.GetConfiguration()).get("StorageDirectory") or "OrthancStorage"
    return Path(storage).expanduser().resolve() / "miadmark" / "exports.sqlite"


class Plugin:
    def __init__(self):
        self.settings = Settings(config_path())
        self.control = Worker("control", log=log)  # plans and small decisions
        self.ingest = Worker("ingest", log=log)  # strip on ingestion
        self.warnings: set[str] = set()
        self.started = False
        self.settings.on_reload = lambda: self.started and self.control.post(self.close_c_get)
        self.settings.current()
        self.outbox = Outbox(outbox_path(self.settings))
        self.delivery = Delivery(self.outbox, self.settings, log)

    # ----------------------------------------------------------- exports

    def start_export(self, target: Target, request: ExportRequest, kind: str = "MiadmarkExport",
                     check=None) -> tuple[str, Plan]:
        """Plan and queue an export; returns the job ID. A caller that waits (Synchronous, C-MOVE)
        gets one attempt per instance; asynchronous exports are retried with backoff."""
        cfg = self.settings.current()
        plan = self.control.call(exports.plan_export, cfg, target, request.resources, timeout=PLAN_TIMEOUT_S)
        if check is not None:
            check(plan)
        description = f"export of {len(plan.items)} instances to {plan.destination} ({target.label})"
        job_id = self.outbox.add_job(kind=kind, description=description, target=(target.kind, target.name),
                                     destination=plan.destination,
                                     calling_ae=str(request.options.get("LocalAet") or plan.calling_ae),
                                     called_ae=plan.called_ae, items=plan.ordered(), options=request.options,
                                     retry=not request.synchronous, content=plan.describe())
        self.delivery.wake()
        return job_id, plan

    def job(self, job_id: str) -> dict | None:
        job = self.outbox.job(job_id)
        return None if job is None else summary(job, self.outbox.progress(job_id))

    def wait(self, job_id: str, timeout: float = 3600.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id)
            if finished(state) or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def auto_export(self, study: str) -> None:
        """A stable study: queue what the auto rules send, once per receipt of each instance. The
        rules decide (miadmark.rules.decide per instance and destination); an instance goes only
        when the rule that decides it is an `auto` rule."""
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
                plan = exports.plan_export(cfg, target, [study], skip_blocked=True, auto=True,
                                           already_queued=self.outbox.queued)
            except (NotFound, Blocked) as exc:
                log(f"auto-export of study {study} to {name}: {exc}")
                continue
            if plan.skipped:
                log(f"auto-export of study {study} to {name}: {plan.skipped} instances left out (blocked by the rules)")
            if not plan.items:
                continue
            late = [i.sop_uid for i in plan.items if i.lesion_source]
            if late and plan.already:  # see lesions.py: the ordering limit
                log(f"auto-export of study {study} to {name}: lesion source(s) {', '.join(late)} arrived after "
                    f"{plan.already} instance(s) of the study were queued; images among them were protected "
                    "without their masks")
            self.outbox.add_job(kind=AUTO_KIND, description=f"auto-export of study {study} to {name} "
                                f"({target.label}): {len(plan.items)} instances", target=(target.kind, target.name),
                                destination=name, calling_ae=plan.calling_ae, called_ae=plan.called_ae,
                                items=plan.ordered(), retry=True, content=plan.describe())
            self.delivery.wake()

    def catch_up(self) -> None:
        """Start-up: studies that became stable while Orthanc was down (or before the plugin was
        ready) fire no event; look at the stable ones updated in the last catch_up_days."""
        days = float(self.settings.option("catch_up_days", 7))
        cfg = self.settings.current()
        if days <= 0 or cfg is None or not any(r.auto for r in cfg.rules):
            return
        since = time.time() - days * 86400
        count = 0
        for study in json.loads(orthanc.RestApiGet("/studies")):
            try:
                info = json.loads(orthanc.RestApiGet(f"/studies/{study}"))
            except Exception:  # noqa: BLE001 - deleted meanwhile
                continue
            if not info.get("IsStable", True) or _orthanc_time(info.get("LastUpdate")) < since:
                continue
            self.auto_export(study)
            count += 1
        log(f"start-up: {count} stable studies looked at for auto-export")

    # ----------------------------------------------------------- C-GET

    def close_c_get(self) -> None:
        """C-GET hands instances to the caller, raw, with no plugin hook: turn AllowGet off for every
        modality the rules do not pass clean (at start-up, after each reload; a modality added or
        changed over REST is checked by routes.modality_route)."""
        cfg = self.settings.current()
        config = json.loads(orthanc.GetConfiguration())
        if config.get("ExecuteLuaEnabled") or config.get("LuaScripts"):
            self.warnings.add("Lua scripts (LuaScripts, /tools/execute-script) can send raw instances outside "
                              "the routing rules: remove them or make sure they do not export")
        calling = exports.local_ae()
        for name, modality in json.loads(orthanc.RestApiGet("/modalities?expand")).items():
            if not modality.get("AllowGet"):
                continue
            if exports.raw_export_allowed(cfg, Target("modality", name), modality.get("AET"), calling):
                continue
            orthanc.RestApiPut(f"/modalities/{name}", json.dumps({**modality, "AllowGet": False}))
            log(f"C-GET from modality {name!r} turned off: it would receive raw instances outside the rules")

    def refuse_always_allow_get(self) -> bool:
        """"DicomAlwaysAllowGet": true lets any AE C-GET raw originals, and Orthanc offers no hook to
        stop it: fail closed, shut this Orthanc down with the reason in its log."""
        if not json.loads(orthanc.GetConfiguration()).get("DicomAlwaysAllowGet"):
            return False
        orthanc.LogError('MIAD-MARK: "DicomAlwaysAllowGet": true lets any AE C-GET raw instances outside the '
                         'routing rules: Orthanc is shut down. Set it to false.')
        orthanc.RestApiPost("/tools/shutdown", "")
        return True

    # ----------------------------------------------------------- status

    def status(self) -> dict:
        s = self.settings
        cfg = s.current()
        receiver = s.receiver
        recent = [self.job(j) for j in self.outbox.job_ids(50)]
        recent = [j for j in recent if j is not None]
        queue = self.outbox.status()
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
            "Outbox": str(self.outbox.path),
            "Queue": queue,  # per destination: pending, retrying, done, dead, quarantined, next try, last error
            "Pending": sum(q["pending"] for q in queue),
            "Retrying": sum(q["retrying"] for q in queue),
            "Dead": sum(q["dead"] for q in queue),
            "DeadLetters": self.outbox.dead_letters(),
            "Running": [j for j in recent if not finished(j)],
            "Failed": [j for j in recent if j["State"] == "Failure"][:20],
            "Recent": [{"ID": j["ID"], "State": j["State"], "Description": j["Description"]} for j in recent[:20]],
        }


def _orthanc_time(value) -> float:
    """Orthanc's LastUpdate ("20261130T115000", UTC here) as a Unix time; 0 when absent."""
    try:
        return float(calendar.timegm(time.strptime(str(value), "%Y%m%dT%H%M%S")))
    except (TypeError, ValueError):
        return 0.0


# ------------------------------------------------------------------------------------------ events

def on_change(plugin: Plugin, change_type, level, resource) -> None:
    try:
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            plugin.control.post(lambda: plugin.auto_export(resource))
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            plugin.started = True
            if plugin.refuse_always_allow_get():
                return
            plugin.control.call(plugin.close_c_get, timeout=60)
            plugin.delivery.start()  # the rows a crash left pending go out now
            plugin.control.post(plugin.catch_up)
    except Exception as exc:  # noqa: BLE001
        log(f"change {change_type} of {resource}: not handled: {exc}")


def on_move(plugin: Plugin, **request) -> None:
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
        job_id, _ = plugin.start_export(Target("modality", name), body, kind="MiadmarkMove")
    except (Blocked, NotFound) as exc:
        log(f"refused C-MOVE from {request.get('OriginatorAET')} to {target_aet}: {exc}")
        raise RuntimeError("C-MOVE refused by the MIAD-MARK routing rules") from None
    state = plugin.wait(job_id)
    if state["State"] != "Success":
        raise RuntimeError(f"C-MOVE to {target_aet}: {state['FailedInstancesCount']} instances failed")


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


# ------------------------------------------------------------------------------------------ install

def install() -> Plugin:
    from . import filters, ingest, monitoring, routes

    plugin = Plugin()
    routes.register(plugin)
    orthanc.RegisterIncomingHttpRequestFilter(lambda uri, **request: filters.http_filter(plugin, uri, **request))
    orthanc.RegisterReceivedInstanceCallback(lambda data, origin: ingest.received_instance(plugin, data, origin))
    orthanc.RegisterIncomingCStoreInstanceFilter(ingest.cstore_filter)
    orthanc.RegisterOnChangeCallback(lambda change_type, level, resource: on_change(plugin, change_type, level,
                                                                                    resource))
    orthanc.RegisterMoveCallback(lambda **request: on_move(plugin, **request))  # C-MOVE SCP: through the rules
    orthanc.ExtendOrthancExplorer((Path(__file__).resolve().parent / "explorer.js").read_text(encoding="utf-8"))
    monitoring.register(plugin)  # /miadmark/metrics, /miadmark/status-page
    log(f"plugin ready (config {plugin.settings.path}, {'loaded' if plugin.settings.config else 'NOT loaded: '}"
        f"{plugin.settings.error or ''}; outbox {plugin.outbox.path})")
    return plugin
