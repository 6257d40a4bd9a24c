"""Delivering protected objects without holding Orthanc's Python lock.

The Python plugin (4.0) keeps the GIL for the whole of an SDK call: an `orthanc.RestApiPost` to
store-straight that waits 80 ms on the network freezes every other Python callback meanwhile,
including the HTTP filter that every REST request goes through (measured: a spinning thread got
0.3 % of its normal iterations during a 2 s SDK call). So protected objects go out with
pynetdicom (one association per job, TCP_NODELAY) or `requests`, which release the GIL while
they wait; the target's address and credentials are read from Orthanc's configuration. Targets
that need what only Orthanc's own client supports (DICOM TLS, peer client certificates or
PKCS#11) fall back to store-straight through the SDK, which is correct but holds the lock.

Every sender's send(ready) answers one dicomnet Outcome per instance (delivered, transient,
permanent or unreachable), classified by dicomnet as the gateway classifies its own; opening a
connection that cannot be made raises dicomnet's Unreachable.
"""

from __future__ import annotations

from typing import Callable

import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnet.dimse import open_association, release, scu_ae, send_on
from dicomnet.outcome import DELIVERED, Outcome, Unreachable, http_outcome, unreachable
from dicomnet.stow import post_instances
from miadmark.dicomio import dataset_to_bytes

from .stow import StowServer

Ready = list[tuple[str, Dataset]]  # (original SOP Instance UID, protected dataset)


class DimseSender:
    """C-STORE over one association, kept open across batches of a job (dicomnet.dimse: the
    gateway's sending code, statuses classified the same way)."""

    def __init__(self, *, called_ae: str, host: str, port: int, calling_ae: str, sop_classes: set[str],
                 timeout_s: float = 30.0, originator: tuple[str | None, int | None] = (None, None)):
        self.called_ae, self.host, self.port, self.calling_ae = called_ae, host, port, calling_ae
        self.originator = (originator[0], int(originator[1] or 1)) if originator[0] else None
        self.sop_classes = sorted(sop_classes)
        self.timeout_s = timeout_s
        self.assoc = None

    def _open(self) -> None:
        contexts = [(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for c in self.sop_classes]
        ae = scu_ae(self.calling_ae, contexts, timeout_s=self.timeout_s)
        self.assoc = open_association(ae, self.host, self.port, self.called_ae)  # or Unreachable

    def send(self, ready: Ready) -> list[Outcome]:
        if not ready:
            return []
        if self.assoc is None or not self.assoc.is_established:
            self._open()
        outcomes = send_on(self.assoc, [ds for _, ds in ready], originator=self.originator)
        if not self.assoc.is_established:
            self.assoc = None
        return [o if o.ok else _named(o, f"protected instance for {uid}: C-STORE to {self.called_ae}")
                for (uid, _), o in zip(ready, outcomes)]

    def close(self) -> None:
        release(self.assoc)
        self.assoc = None


class HttpSender:
    """POST each protected file to an Orthanc peer's /instances (keep-alive session)."""

    def __init__(self, name: str, url: str, username: str | None, password: str | None,
                 headers: dict[str, str], timeout_s: float = 60.0):
        self.name, self.url = name, url.rstrip("/") + "/instances"
        self.session = requests.Session()
        self.session.headers.update(headers)
        if username:
            self.session.auth = (username, password or "")
        self.timeout_s = timeout_s

    def send(self, ready: Ready) -> list[Outcome]:
        outcomes = []
        for uid, ds in ready:
            what = f"protected instance for {uid}: peer {self.name}"
            try:
                response = self.session.post(self.url, data=dataset_to_bytes(ds), timeout=self.timeout_s,
                                             headers={"Content-Type": "application/dicom"})
            except requests.RequestException as exc:
                outcomes.append(unreachable(f"{what}: {type(exc).__name__}"))
                continue
            status = _orthanc_status(response)
            if response.status_code == 200 and status not in ("Success", "AlreadyStored", None):
                # stored nothing although the request was fine ("FilteredOut": a plugin refused it)
                outcomes.append(Outcome(False, f"{what} answered {status} (refused: not retried)", permanent=True))
            else:
                out = http_outcome(response.status_code, f"{what} answered")
                outcomes.append(out if out.ok else _named(out, "", f" ({status})" if status else ""))
        return outcomes

    def close(self) -> None:
        self.session.close()


def _named(outcome: Outcome, what: str, suffix: str = "") -> Outcome:
    """The same outcome, its reason prefixed with what failed."""
    error = f"{what}: {outcome.error}" if what else outcome.error
    return Outcome(False, error + suffix, permanent=outcome.permanent, unreachable=outcome.unreachable)


def _orthanc_status(response) -> str | None:
    """Orthanc's "Status" of an upload ("FilteredOut" when a plugin refused it)."""
    try:
        return response.json().get("Status")
    except Exception:  # noqa: BLE001 - not Orthanc, or not JSON
        return None


class StowSender:
    """One STOW-RS POST per batch (dicomnet.stow: a 202 fails only the instances it names)."""

    def __init__(self, server: StowServer):
        self.server = server
        self.session = requests.Session()

    def send(self, ready: Ready) -> list[Outcome]:
        if not ready:
            return []
        items = [(str(ds.SOPInstanceUID), dataset_to_bytes(ds)) for _, ds in ready]
        try:
            outcomes = post_instances(self.server.target(), items, session=self.session)
        except Unreachable as exc:
            return [unreachable(f"protected instance for {uid}: not delivered ({exc})") for uid, _ in ready]
        return [o if o.ok else _named(o, f"protected instance for {uid}: not delivered to {self.server.name}")
                for (uid, _), o in zip(ready, outcomes)]

    def close(self) -> None:
        self.session.close()


class SdkSender:
    """store-straight through Orthanc's own client (holds the GIL while it waits)."""

    def __init__(self, route: str, post: Callable[[str, bytes], object], label: str):
        self.route, self.post, self.label = route, post, label

    def send(self, ready: Ready) -> list[Outcome]:
        outcomes = []
        for uid, ds in ready:
            try:
                self.post(self.route, dataset_to_bytes(ds))
                outcomes.append(DELIVERED)
            except Exception as exc:  # noqa: BLE001 - Orthanc's client says no more than its message: retried
                outcomes.append(Outcome(False, f"protected instance for {uid}: not delivered to {self.label} ({exc})"))
        return outcomes

    def close(self) -> None:
        pass


def peer_entry(config: dict, name: str) -> dict | None:
    """Orthanc's OrthancPeers entry as {"Url", "Username", "Password", "HttpHeaders", ...}, or None."""
    entry = (config.get("OrthancPeers") or {}).get(name)
    if isinstance(entry, list) and entry:
        return {"Url": entry[0], "Username": entry[1] if len(entry) > 2 else None,
                "Password": entry[2] if len(entry) > 2 else None}
    return entry if isinstance(entry, dict) and entry.get("Url") else None


def needs_orthanc_client(entry: dict) -> bool:
    return bool(entry.get("CertificateFile") or entry.get("Pkcs11"))

