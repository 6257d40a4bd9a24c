"""A minimal STOW-RS client for DICOMweb servers declared in Orthanc's `DicomWeb.Servers`.

Orthanc's own `/dicom-web/servers/{name}/stow` only sends instances stored in Orthanc; protected
objects are never stored there, so the plugin posts them itself with the server's URL,
credentials and headers read from Orthanc's configuration.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass(frozen=True)
class StowServer:
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    @classmethod
    def from_orthanc(cls, name: str, entry: Any) -> "StowServer":
        """entry: Orthanc's ["url", "user", "password"] array form or its {"Url": ...} object form."""
        if isinstance(entry, list) and entry:
            return cls(name, str(entry[0]), *(entry[1:3] if len(entry) >= 3 else (None, None)))
        if isinstance(entry, dict) and entry.get("Url"):
            timeout = entry.get("Timeout") or 60
            return cls(name, str(entry["Url"]), entry.get("Username"), entry.get("Password"),
                       dict(entry.get("HttpHeaders") or {}), float(timeout))
        raise ValueError(f"DicomWeb server {name!r} has no Url in Orthanc's configuration")


def multipart(instances: list[bytes]) -> tuple[bytes, str]:
    boundary = "miadmark-" + uuid.uuid4().hex
    parts = []
    for data in instances:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(server: StowServer, instances: list[bytes], session: requests.Session | None = None) -> None:
    """POST instances to <url>/studies; raise RuntimeError with the HTTP status on failure."""
    if not instances:
        return
    body, content_type = multipart(instances)
    headers = {**server.headers, "Content-Type": content_type, "Accept": "application/dicom+json"}
    auth = (server.username, server.password or "") if server.username else None
    http = session or requests
    try:
        response = http.post(server.url.rstrip("/") + "/studies", data=body, headers=headers, auth=auth,
                             timeout=server.timeout_s)
    except requests.RequestException as exc:
        raise RuntimeError(f"STOW-RS to {server.name}: {type(exc).__name__}") from None
    if response.status_code not in (200, 204):
        raise RuntimeError(f"STOW-RS to {server.name}: HTTP {response.status_code}")
