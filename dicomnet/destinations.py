"""Which way out serves which kind of destination, registered once beside the code that serves it (as
mercure's @handler_for registry does). The kinds and their YAML models are the core's
(miadmark.config.DESTINATION_MODELS); each adapter registers a handler per kind it can send to:

    gateway   dicom_node.transports    dimse, stow           (the transport class)
    orthanc   orthanc_plugin.kinds     orthanc_modality, orthanc_peer, orthanc_dicomweb  (Orthanc's target kind)
    release   cohort_release.sink      stow                  (the sink class)

At start-up an adapter asks unserved() about its configuration and says which destinations it will
not send to, and why (another adapter serves them), instead of skipping them in silence.
"""

from __future__ import annotations

from miadmark.config import DESTINATION_MODELS

_HANDLERS: dict[str, dict[str, object]] = {}  # adapter -> kind -> handler


def register(adapter: str, kind: str, handler: object) -> object:
    if kind not in DESTINATION_MODELS:
        raise ValueError(f"unknown destination kind {kind!r} (known: {', '.join(DESTINATION_MODELS)})")
    served = _HANDLERS.setdefault(adapter, {})
    if served.get(kind, handler) is not handler:
        raise ValueError(f"{adapter} already has a handler for {kind!r}")
    served[kind] = handler
    return handler


def handler_for(adapter: str, kind: str):
    """Class decorator: this class is how `adapter` sends to destinations of `kind`."""
    return lambda handler: register(adapter, kind, handler)


def handlers(adapter: str) -> dict[str, object]:
    """kind -> handler, for the kinds this adapter serves (a copy)."""
    return dict(_HANDLERS.get(adapter, {}))


def unserved(adapter: str, destinations: dict) -> dict[str, str]:
    """{destination name: why this adapter does not send to it} for the configured destinations (name ->
    model) whose kind it has no handler for."""
    served = _HANDLERS.get(adapter, {})
    return {name: f"kind {dest.kind}: the {adapter} sends only to {', '.join(served) or 'no'} destinations"
            for name, dest in destinations.items() if dest.kind not in served}
