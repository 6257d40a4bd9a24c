"""DICOMweb servers declared in Orthanc's `DicomWeb.Servers`, sent to with dicomnet.stow.

Orthanc's own `/dicom-web/servers/{name}/stow` only sends instances stored in Orthanc; protected
objects are never stored there, so the plugin posts them itself with the server's URL,
credentials, headers and TLS settings read from Orthanc's configuration.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import requests
from pydicom import dcmread

from dicomnet.outcome import Outcome
from dicomnet.stow import StowTarget, multipart, post_instances

__all__ = ["StowServer", "multipart", "stow"]


@dataclass(frozen=True)
class StowServer:
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    verify: bool | str = True  # Orthanc's HttpsCACertificates / HttpsVerifyPeers
    cert: tuple[str, str] | None = None  # CertificateFile + CertificateKeyFile (mutual TLS)

    @classmethod
    def from_orthanc(cls, name: str, entry: Any, orthanc_config: dict | None = None) -> "StowServer":
        """entry: Orthanc's ["url", "user", "password"] array form or its {"Url": ...} object form."""
        cfg = orthanc_config or {}
        verify: bool | str = cfg.get("HttpsCACertificates") or bool(cfg.get("HttpsVerifyPeers", True))
        if isinstance(entry, list) and entry:
            return cls(name, str(entry[0]), *(entry[1:3] if len(entry) >= 3 else (None, None)), verify=verify)
        if isinstance(entry, dict) and entry.get("Url"):
            timeout = entry.get("Timeout") or 60
            cert = (str(entry["CertificateFile"]), str(entry.get("CertificateKeyFile") or entry["CertificateFile"])) \
                if entry.get("CertificateFile") else None
            return cls(name, str(entry["Url"]), entry.get("Username"), entry.get("Password"),
                       dict(entry.get("HttpHeaders") or {}), float(timeout), verify, cert)
        raise ValueError(f"DicomWeb server {name!r} has no Url in Orthanc's configuration")

    def target(self) -> StowTarget:
        auth = (self.username, self.password or "") if self.username else None
        return StowTarget(self.url.rstrip("/") + "/studies", self.name, dict(self.headers), auth, self.timeout_s,
                          self.verify, self.cert)


def sop_instance_uid(data: bytes) -> str:
    try:
        return str(dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - not findable: it can only fail as a whole
        return "?"


def stow(server: StowServer, instances: list[bytes], session: requests.Session | None = None) -> list[Outcome]:
    """POST instances: one dicomnet Outcome per instance (a 202 partial success fails only those it
    names); dicomnet's Unreachable when the server does not answer."""
    if not instances:
        return []
    uids = [sop_instance_uid(data) for data in instances]
    outcomes = post_instances(server.target(), list(zip(uids, instances)), session=session)
    return [o if o.ok else Outcome(False, f"{uid}: STOW-RS to {server.name}: {o.error}", o.permanent, o.unreachable)
            for uid, o in zip(uids, outcomes)]
