"""The destination kinds the plugin sends to, registered once (dicomnet.destinations): each is one of
Orthanc's own targets (a modality, a peer, a DICOMweb server), named by Orthanc's configuration."""

from __future__ import annotations

from dicomnet.destinations import handlers, register, unserved

ORTHANC_TARGETS = {"orthanc_modality": "modality", "orthanc_peer": "peer", "orthanc_dicomweb": "dicomweb"}
for _kind, _target in ORTHANC_TARGETS.items():
    register("orthanc", _kind, _target)


def unserved_destinations(cfg) -> dict[str, str]:
    """The configured destinations the plugin does not send to (dimse, stow: the gateway's)."""
    return unserved("orthanc", cfg.destinations)


__all__ = ["handlers", "unserved_destinations"]
