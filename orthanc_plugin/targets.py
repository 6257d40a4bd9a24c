"""How each Orthanc target is reached: clean originals through Orthanc's own route, protected objects
through senders.py (pynetdicom / requests, without the Python lock), with the target's address and
options read from Orthanc's configuration."""

from __future__ import annotations

import json
import time

from dicomnet.outcome import DELIVERED, Outcome

from .exports import NotFound, Target, local_ae, target_ae
from .sdk import orthanc
from .stow import StowServer, stow

CORE_ROUTES = {"modality": "/modalities/{}/store", "peer": "/peers/{}/store"}


def send_plain(target: Target, ids: list[str], options: dict) -> list[Outcome]:
    """The originals as they are: one dicomnet Outcome per instance for a DICOMweb server (its answer
    is read per instance); through Orthanc's own job otherwise, which succeeds or fails as a whole
    (RuntimeError, like dicomnet's Unreachable: the whole chunk waits)."""
    if target.kind == "dicomweb":
        server = stow_server(target.name)
        outcomes = []
        for start in range(0, len(ids), 16):
            outcomes += stow(server, [orthanc.GetDicomForInstance(iid) for iid in ids[start:start + 16]])
        return outcomes
    body = {k: v for k, v in options.items() if k not in ("Synchronous", "Asynchronous")}
    body["Resources"] = ids
    body["Asynchronous"] = True
    job = json.loads(orthanc.RestApiPost(CORE_ROUTES[target.kind].format(target.name), json.dumps(body)))
    while True:
        state = json.loads(orthanc.RestApiGet(f"/jobs/{job['ID']}"))
        if state["State"] == "Success":
            return [DELIVERED] * len(ids)
        if state["State"] == "Failure":
            raise RuntimeError(f"Orthanc job {job['ID']} to {target.label} failed: {state.get('ErrorDescription')}")
        time.sleep(0.1)


def make_sender(target: Target, options: dict, sop_classes: set[str]):
    """How protected objects reach the target (see senders.py: without the Python lock held).
    Honours the export's LocalAet and, for C-MOVE, the move originator."""
    from . import senders

    config = json.loads(orthanc.GetConfiguration())
    if target.kind == "dicomweb":
        return senders.StowSender(stow_server(target.name))
    if target.kind == "modality":
        target_ae(target)  # NotFound when the modality is gone
        conf = json.loads(orthanc.RestApiGet(f"/modalities/{target.name}/configuration"))
        if conf.get("UseDicomTls"):
            return senders.SdkSender(f"/modalities/{target.name}/store-straight", orthanc.RestApiPost, target.label)
        timeout = float(conf.get("Timeout") or config.get("DicomScuTimeout") or 10)
        sender = senders.DimseSender(called_ae=conf["AET"], host=conf["Host"], port=int(conf["Port"]),
                                     calling_ae=options.get("LocalAet") or conf.get("LocalAet") or local_ae(),
                                     sop_classes=sop_classes, timeout_s=max(timeout, 30.0),
                                     originator=(options.get("MoveOriginatorAet"), options.get("MoveOriginatorID")))
        sender._open()  # fails here (Down) when the modality does not answer
        return sender
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
