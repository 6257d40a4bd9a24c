"""The HTTP filter: routes that would let originals out without the rules.

Always refused (unless the target is an unconditional `pass`): store-straight to modalities and
peers, DICOMweb `post`, and the DICOMweb plugin's own `stow` when it was loaded first.
Refused with `orthanc: {raw_downloads: refuse}` (an Orthanc reachable from outside): every route
that hands out an original or its pixels (RAW_DOWNLOADS). Inside a hospital they are normal.
"""

from __future__ import annotations

import json
import re

from . import exports
from .exports import Target
from .sdk import orthanc
from .settings import log

ORDER_PROBE = "miadmark-order-probe"
# Originals (or their pixels) for whoever asks: file, archives, media, exports to disk, frames and
# renderings, element content, attachments, WADO-URI, and WADO-RS retrieval (not QIDO, not /metadata).
RAW_DOWNLOADS = re.compile(
    r"^/(patients|studies|series|instances)/[^/]+/(archive|media)/?$"
    r"|^/instances/[^/]+/(file|export|frames(/.*)?|preview|image-uint8|image-uint16|image-int16|matlab|numpy"
    r"|rendered|pdf|content(/.*)?|attachments(/.*)?)/?$"
    r"|^/series/[^/]+/(numpy|attachments(/.*)?)/?$"
    r"|^/tools/create-(archive|media|media-extended)/?$"
    r"|^/wado/?$"
    r"|^/dicom-web/studies/[^/]+(/series/[^/]+(/instances/[^/]+)?)?(/(frames/.*|rendered|thumbnail|bulk/.*))?/?$")

RAW_ROUTES = re.compile(r"^/(modalities|peers)/([^/]+)/store-straight/?$|^/dicom-web/servers/([^/]+)/(post|stow)/?$")
_STOW_OVERRIDE: list[bool] = []


def stow_override_first() -> bool:
    """Does our /dicom-web/servers/{name}/stow reach the request before the DICOMweb plugin's?
    (The first plugin loaded wins; list libOrthancPython.so before libOrthancDicomWeb.so.)
    Checked once through the plugins' router with a probe name."""
    if not _STOW_OVERRIDE:
        try:
            answer = json.loads(orthanc.RestApiPostAfterPlugins(f"/dicom-web/servers/{ORDER_PROBE}/stow", "{}"))
            first = bool(answer.get("MiadMarkOverride"))
        except Exception:  # noqa: BLE001 - the DICOMweb plugin answered (unknown server)
            first = False
        _STOW_OVERRIDE.append(first)
        if not first:
            log("the DICOMweb plugin is loaded before this plugin: its /dicom-web/servers/{name}/stow is refused "
                "for protect/block destinations; list libOrthancPython.so first in \"Plugins\" "
                "or use POST /miadmark/protect")
    return _STOW_OVERRIDE[0]


def http_filter(plugin, uri, **request) -> bool:
    """Refuse raw export routes (store-straight, DICOMweb 'post') to targets whose rules are not an
    unconditional pass, and, with `orthanc: {raw_downloads: refuse}`, the routes that hand out
    originals. Fail closed: an error here refuses the request."""
    try:
        if RAW_DOWNLOADS.match(uri) and plugin.settings.option("raw_downloads", "allow") != "allow":
            log(f"refused {uri}: raw downloads are refused on this Orthanc (orthanc: raw_downloads)")
            return False
        if request.get("method") != orthanc.HttpMethod.POST:
            return True
        m = RAW_ROUTES.match(uri)
        if not m:
            return True
        if m.group(4) == "stow" and (m.group(3) == ORDER_PROBE or stow_override_first()):
            return True  # our override handles it: it goes through the rules
        target = (Target("modality" if m.group(1) == "modalities" else "peer", m.group(2)) if m.group(1)
                  else Target("dicomweb", m.group(3)))
        called = exports.target_ae(target) if target.kind == "modality" else None
        allowed = exports.raw_export_allowed(plugin.settings.current(), target, called, exports.local_ae())
        if not allowed:
            log(f"refused POST {uri}: raw bytes to {target.label} would bypass the routing rules "
                "(use /store, which goes through them)")
        return allowed
    except Exception as exc:  # noqa: BLE001
        log(f"refused POST {uri}: filter error {type(exc).__name__}: {exc}")
        return False
