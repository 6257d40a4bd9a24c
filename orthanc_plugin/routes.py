"""REST routes: Orthanc's export routes through the rules, the plugin's own routes, and the job API.

Overrides of built-in routes (a plugin route on a built-in URI shadows it; orthanc.RestApi* reach
the built-in one): /modalities/{name}/store, /peers/{name}/store, /dicom-web/servers/{name}/stow
(exports), /modalities/{name} (C-GET decided when a modality is added or changed), /jobs (plugin
jobs listed with Orthanc's, so the Explorer's Jobs page shows them), /instances (receiving site:
an upload the receiver refuses is answered 403, not 200 "FilteredOut").
"""

from __future__ import annotations

import json
import traceback

from . import exports
from .bodies import BadRequest, parse_export_body, parse_protect_body
from .exports import Blocked, NotFound, Target
from .filters import ORDER_PROBE
from .outbox import JOB_PREFIX
from .sdk import orthanc
from .settings import log


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


def register(plugin) -> None:
    for pattern, kind in (("/modalities/([^/]+)/store", "modality"), ("/peers/([^/]+)/store", "peer"),
                          ("/dicom-web/servers/([^/]+)/stow", "dicomweb")):
        orthanc.RegisterRestCallback(pattern, _rest(_export_route(plugin, kind)))
    orthanc.RegisterRestCallback("/miadmark/status", _rest(lambda o, u, **r: _answer(o, plugin.status()), ("GET",)))
    orthanc.RegisterRestCallback("/miadmark/destinations", _rest(lambda o, u, **r: _destinations(plugin, o),
                                                                 ("GET",)))
    orthanc.RegisterRestCallback("/miadmark/protect", _rest(lambda o, u, **r: _protect(plugin, o, **r)))
    orthanc.RegisterRestCallback("/miadmark/retry", _rest(lambda o, u, **r: _retry(plugin, o, **r)))
    orthanc.RegisterRestCallback("/miadmark/jobs/([^/]+)", _rest(lambda o, u, **r: _job(plugin, o, **r), ("GET",)))
    orthanc.RegisterRestCallback(f"/jobs/({JOB_PREFIX}[0-9a-f-]+)", _rest(lambda o, u, **r: _job(plugin, o, **r),
                                                                          ("GET",)))
    orthanc.RegisterRestCallback("/jobs", _rest(lambda o, u, **r: _jobs(plugin, o, **r), ("GET",)))
    orthanc.RegisterRestCallback("/modalities/([^/]+)", _rest(lambda o, u, **r: _modality(plugin, o, **r),
                                                              ("GET", "PUT", "DELETE")))
    cfg = plugin.settings.config
    if cfg is not None and cfg.receiver is not None:
        orthanc.RegisterRestCallback("/instances", _rest(lambda o, u, **r: _upload(o, **r), ("GET", "POST")))


# ------------------------------------------------------------------------------------------ exports

def _export_route(plugin, kind: str):
    def route(output, uri, **request):
        target = Target(kind, request["groups"][0])
        if target.name == ORDER_PROBE:
            _answer(output, {"MiadMarkOverride": True})
            return
        body = parse_export_body(request.get("body"))
        job_id, plan = plugin.start_export(target, body)
        if not body.synchronous:
            _answer(output, {"ID": job_id, "Path": f"/jobs/{job_id}"})
            return
        summary = plugin.wait(job_id)
        answer = {"Description": "REST API through MIAD-MARK", "InstancesCount": summary["InstancesCount"],
                  "FailedInstancesCount": summary["FailedInstancesCount"], "ParentResources": list(body.resources),
                  "RemoteAet": plan.called_ae, "MiadMark": summary}
        _answer(output, answer, 200 if summary["State"] == "Success" else 500)
    return route


def _protect_destinations(cfg) -> list[str]:
    """Orthanc destinations that some `protect` rule names: the only ones "Protect and send" offers."""
    if cfg is None:
        return []
    named = {n for rule in cfg.rules if rule.action == "protect" for n in rule.send_to or []}
    return [n for n, d in cfg.destinations.items() if n in named and d.kind in exports.KINDS.values()]


def _destinations(plugin, output) -> None:
    cfg = plugin.settings.current()
    _answer(output, [{"Name": n, "Kind": cfg.destinations[n].kind, "Target": cfg.destinations[n].target}
                     for n in _protect_destinations(cfg)])


def _protect(plugin, output, **request) -> None:
    """POST /miadmark/protect: protect and send a study. Refused (403) when the rules would send any
    of it clean (`pass`): this route protects or sends nothing. The answer says what was queued."""
    resource, destination, synchronous = parse_protect_body(request.get("body"))
    cfg = plugin.settings.current()
    if cfg is None:
        raise Blocked("the MIAD-MARK configuration is not loaded")
    target = exports.target_of(cfg, destination)

    def only_protect(plan) -> None:
        clean = plan.count("pass")
        if clean:
            raise Blocked(f"{clean} instance(s) would go to {destination} clean (the rules say pass there): "
                          "Protect and send protects or sends nothing; use Orthanc's own Send to")

    body = parse_export_body(json.dumps({"Resources": [resource], "Synchronous": synchronous}))
    job_id, plan = plugin.start_export(target, body, kind="MiadmarkProtect", check=only_protect)
    summary = plugin.wait(job_id) if synchronous else plugin.job(job_id)
    _answer(output, {"ID": job_id, "Path": f"/jobs/{job_id}", "State": summary["State"],
                     "Destination": destination, "Target": target.label,
                     "Protect": plan.count("protect"), "Pass": plan.count("pass"),
                     "LesionSourcesUnchanged": sum(i.lesion_source for i in plan.items),
                     "DoneCount": summary["DoneCount"], "FailedInstancesCount": summary["FailedInstancesCount"]})


# ------------------------------------------------------------------------------------------ jobs

def _retry(plugin, output, **request) -> None:
    """POST /miadmark/retry {"Destination": name} (or {} for all): dead letters are queued again."""
    try:
        body = json.loads(request.get("body") or b"{}")
    except ValueError:
        raise BadRequest("body must be JSON: {\"Destination\": \"<name>\"} or {}") from None
    destination = body.get("Destination") if isinstance(body, dict) else None
    count = plugin.outbox.retry_dead(destination)
    plugin.delivery.wake()
    log(f"{count} dead letter(s) queued again" + (f" for {destination}" if destination else ""))
    _answer(output, {"Requeued": count})


def _job(plugin, output, **request) -> None:
    job = plugin.job(request["groups"][0])
    if job is None:
        raise NotFound(f"no MIAD-MARK job {request['groups'][0]}")
    _answer(output, job)


def _jobs(plugin, output, **request) -> None:
    """Orthanc's GET /jobs[?expand] with the plugin's jobs (newest 100) added."""
    expand = "expand" in (request.get("get") or {})
    core = json.loads(orthanc.RestApiGet("/jobs?expand" if expand else "/jobs"))
    ours = plugin.outbox.job_ids(100)
    _answer(output, core + ([plugin.job(j) for j in ours] if expand else ours))


# ------------------------------------------------------------------------------------------ modalities

def _modality(plugin, output, **request) -> None:
    """/modalities/{name}: Orthanc's route, except that a PUT asking for AllowGet on a modality the
    rules do not pass clean unconditionally is stored with AllowGet false (C-GET sends raw)."""
    name, method = request["groups"][0], request.get("method")
    if method == "GET":
        output.AnswerBuffer(orthanc.RestApiGet(f"/modalities/{name}"), "application/json")
        return
    if method == "DELETE":
        orthanc.RestApiDelete(f"/modalities/{name}")
        _answer(output, {})
        return
    try:
        body = json.loads(request.get("body") or b"null")
    except ValueError:
        raise BadRequest("the body must be JSON (Orthanc's modality format)") from None
    aet = body[0] if isinstance(body, list) and body else body.get("AET") if isinstance(body, dict) else None
    allow_get = isinstance(body, dict) and body.get("AllowGet")
    if allow_get and not exports.raw_export_allowed(plugin.settings.current(), Target("modality", name), aet,
                                                    exports.local_ae()):
        body["AllowGet"] = False
        log(f"modality {name!r} stored with AllowGet false: C-GET would hand it raw instances outside the rules")
    orthanc.RestApiPut(f"/modalities/{name}", json.dumps(body))
    _answer(output, {})


# ------------------------------------------------------------------------------------------ uploads

def _upload(output, **request) -> None:
    """Receiving site: POST /instances through Orthanc's own route; an instance the receiver refused
    (quarantined) is answered 403 instead of 200 "FilteredOut", so a script checking status sees it."""
    if request.get("method") == "GET":
        output.AnswerBuffer(orthanc.RestApiGet("/instances" + _query(request)), "application/json")
        return
    answer = orthanc.RestApiPost("/instances", request.get("body") or b"")
    try:
        value = json.loads(answer)
    except ValueError:
        value = None
    statuses = [v.get("Status") for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict)]
    if "FilteredOut" in statuses:
        _answer(output, {"Error": "Refused by the MIAD-MARK receiver (quarantined, see its folder)",
                         "Details": value}, 403)
        return
    output.AnswerBuffer(answer, "application/json")


def _query(request) -> str:
    get = request.get("get") or {}
    return ("?" + "&".join(f"{k}={v}" if v else k for k, v in get.items())) if get else ""
