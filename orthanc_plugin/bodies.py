"""Request bodies of Orthanc's export routes, parsed the way Orthanc itself accepts them.

`POST /modalities/{name}/store`, `/peers/{name}/store` and `/dicom-web/servers/{name}/stow`
take one Orthanc identifier (raw text or a JSON string), a JSON list of identifiers, or a JSON
object with "Resources" and options ("Synchronous"/"Asynchronous", "LocalAet", "Timeout", ...).
No Orthanc import here: unit-testable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class BadRequest(ValueError):
    """The body is not something Orthanc's own route would accept."""


@dataclass(frozen=True)
class ExportRequest:
    resources: tuple[str, ...]
    synchronous: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # everything else, passed on for `pass`

    def core_body(self, resources: list[str]) -> bytes:
        """The body for Orthanc's built-in route, for a subset of the resources, synchronous."""
        body = {k: v for k, v in self.options.items()}
        body["Resources"] = list(resources)
        body["Synchronous"] = True
        body.pop("Asynchronous", None)
        return json.dumps(body).encode()


def parse_export_body(body: bytes | str | None, *, default_synchronous: bool = True) -> ExportRequest:
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else (body or "")
    text = text.strip()
    if not text:
        raise BadRequest("empty body: give an Orthanc identifier, a list of them, or {\"Resources\": [...]}")
    try:
        value = json.loads(text)
    except ValueError:
        value = text  # a bare identifier, as Orthanc accepts
    if isinstance(value, str):
        return ExportRequest(resources=(_identifier(value),), synchronous=default_synchronous)
    if isinstance(value, list):
        return ExportRequest(resources=tuple(_identifier(v) for v in value), synchronous=default_synchronous)
    if isinstance(value, dict):
        resources = value.get("Resources")
        if isinstance(resources, str):
            resources = [resources]
        if not isinstance(resources, list) or not resources:
            raise BadRequest("\"Resources\" must be a non-empty list of Orthanc identifiers")
        synchronous = default_synchronous
        if "Synchronous" in value:
            synchronous = bool(value["Synchronous"])
        if "Asynchronous" in value:
            synchronous = not bool(value["Asynchronous"])
        options = {k: v for k, v in value.items() if k not in ("Resources", "Synchronous", "Asynchronous")}
        return ExportRequest(resources=tuple(_identifier(v) for v in resources), synchronous=synchronous,
                             options=options)
    raise BadRequest("body must be an identifier, a list of identifiers or an object with \"Resources\"")


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise BadRequest(f"not an Orthanc identifier: {str(value)[:80]!r}")
    return value.strip()


def parse_protect_body(body: bytes | str | None) -> tuple[str, str, bool]:
    """POST /miadmark/protect: {"Study"|"Resources": id, "Destination": name, "Synchronous": false}."""
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("body must be JSON: {\"Study\": \"<orthanc id>\", \"Destination\": \"<name>\"}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    resource = value.get("Study") or value.get("Resource") or value.get("Resources")
    if isinstance(resource, list) and len(resource) == 1:
        resource = resource[0]
    destination = value.get("Destination")
    if not isinstance(resource, str) or not isinstance(destination, str):
        raise BadRequest("need \"Study\" (an Orthanc study identifier) and \"Destination\" "
                         "(a destination name from miadmark.yaml)")
    return _identifier(resource), destination, bool(value.get("Synchronous", False))
