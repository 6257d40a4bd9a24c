"""Delivering protected objects without holding Orthanc's Python lock.

The Python plugin (4.0) keeps the GIL for the whole of an SDK call: an `orthanc.RestApiPost` to
store-straight that waits 80 ms on the network freezes every other Python callback meanwhile,
including the HTTP filter that every REST request goes through (measured: a spinning thread got
0.3 % of its normal iterations during a 2 s SDK call). So protected objects go out with
pynetdicom (one association per job, TCP_NODELAY) or `requests`, which release the GIL while
they wait; the target's address and credentials are read from Orthanc's configuration. Targets
that need what only Orthanc's own client supports (DICOM TLS, peer client certificates or
PKCS#11) fall back to store-straight through the SDK, which is correct but holds the lock.
"""

from __future__ import annotations

import socket
from typing import Callable

import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from miadmark.dicomio import dataset_to_bytes

from .stow import StowServer, stow

Ready = list[tuple[str, Dataset]]  # (original SOP Instance UID, protected dataset)
OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class DimseSender:
    """C-STORE over one association, kept open across batches of a job."""

    def __init__(self, *, called_ae: str, host: str, port: int, calling_ae: str, sop_classes: set[str],
                 timeout_s: float = 30.0, originator: tuple[str | None, int | None] = (None, None)):
        self.called_ae, self.host, self.port, self.calling_ae = called_ae, host, port, calling_ae
        self.originator_aet, self.originator_id = originator
        self.sop_classes = sorted(sop_classes)
        self.timeout_s = timeout_s
        self.assoc = None

    def _open(self) -> None:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in self.sop_classes[:128]:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.assoc = ae.associate(self.host, self.port, ae_title=self.called_ae,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
        if not self.assoc.is_established:
            raise ConnectionError(f"no association with {self.called_ae}@{self.host}:{self.port}"
                                  + (" (rejected)" if self.assoc.is_rejected else ""))

    def send(self, ready: Ready) -> tuple[int, list[str]]:
        if not ready:
            return 0, []
        if self.assoc is None or not self.assoc.is_established:
            self._open()
        sent, failures = 0, []
        for index, (uid, ds) in enumerate(ready):
            if self.assoc is None:  # the association was lost: the rest of the batch is not sent
                failures += [f"protected instance for {u}: not sent (association to {self.called_ae} lost)"
                             for u, _ in ready[index:]]
                break
            if self.originator_aet:
                status = self.assoc.send_c_store(ds, originator_aet=self.originator_aet,
                                                 originator_id=int(self.originator_id or 1))
            else:
                status = self.assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code in OK_STATUSES:
                sent += 1
            else:
                failures.append(f"protected instance for {uid}: C-STORE to {self.called_ae} answered "
                                + (f"0x{code:04X}" if code is not None else "nothing"))
                if not self.assoc.is_established:
                    self.assoc = None
        return sent, failures

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


def _nodelay(event) -> None:
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


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

    def send(self, ready: Ready) -> tuple[int, list[str]]:
        sent, failures = 0, []
        for uid, ds in ready:
            try:
                response = self.session.post(self.url, data=dataset_to_bytes(ds), timeout=self.timeout_s,
                                             headers={"Content-Type": "application/dicom"})
                status = _orthanc_status(response)
                if response.status_code == 200 and status in ("Success", "AlreadyStored", None):
                    sent += 1
                    continue
                failures.append(f"protected instance for {uid}: peer {self.name} answered HTTP "
                                f"{response.status_code}" + (f" ({status})" if status else ""))
            except requests.RequestException as exc:
                failures.append(f"protected instance for {uid}: peer {self.name}: {type(exc).__name__}")
        return sent, failures

    def close(self) -> None:
        self.session.close()


def _orthanc_status(response) -> str | None:
    """Orthanc's "Status" of an upload ("FilteredOut" when a plugin refused it)."""
    try:
        return response.json().get("Status")
    except Exception:  # noqa: BLE001 - not Orthanc, or not JSON
        return None


class StowSender:
    def __init__(self, server: StowServer):
        self.server = server
        self.session = requests.Session()

    def send(self, ready: Ready) -> tuple[int, list[str]]:
        if not ready:
            return 0, []
        try:
            stow(self.server, [dataset_to_bytes(ds) for _, ds in ready], session=self.session)
            return len(ready), []
        except Exception as exc:  # noqa: BLE001
            return 0, [f"protected instance for {uid}: not delivered ({exc})" for uid, _ in ready]

    def close(self) -> None:
        self.session.close()


class SdkSender:
    """store-straight through Orthanc's own client (holds the GIL while it waits)."""

    def __init__(self, route: str, post: Callable[[str, bytes], object], label: str):
        self.route, self.post, self.label = route, post, label

    def send(self, ready: Ready) -> tuple[int, list[str]]:
        sent, failures = 0, []
        for uid, ds in ready:
            try:
                self.post(self.route, dataset_to_bytes(ds))
                sent += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(f"protected instance for {uid}: not delivered to {self.label} ({exc})")
        return sent, failures

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

