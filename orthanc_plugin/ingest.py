"""Ingestion at a receiving site: strip protected instances before Orthanc stores them.

The strip itself is orthanc_plugin/receiver.py (the receiving policy); this module is the Orthanc
side: the ReceivedInstanceCallback and the C-STORE filter that turns a refusal into a DICOM
failure status.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from .sdk import orthanc
from .settings import log

PLAN_TIMEOUT_S = 600


REFUSED_STATUS = 0x0110  # the one generic C-STORE failure a receiver answers (as dicom_node does)
_REFUSED: "OrderedDict[str, float]" = OrderedDict()  # sha256 of instances to refuse in the C-STORE filter
_REFUSED_LOCK = threading.Lock()


def _refuse(data: bytes, origin):
    """Not stored. Over DICOM, Orthanc 1.10 answers a DISCARD with success (checked): instead keep it
    here and let the C-STORE filter, which Orthanc calls right after this callback with the same
    bytes (checked), answer one generic failure status and drop it. Elsewhere (REST): DISCARD."""
    if origin == orthanc.InstanceOrigin.DICOM_PROTOCOL:
        with _REFUSED_LOCK:
            _REFUSED[hashlib.sha256(data).hexdigest()] = time.time()
            while len(_REFUSED) > 1000:
                _REFUSED.popitem(last=False)
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    return orthanc.ReceivedInstanceAction.DISCARD, None


def cstore_filter(instance) -> int:
    """IncomingCStoreInstanceFilter: refuse what received_instance marked (0 = accept)."""
    if not _REFUSED:
        return 0
    try:
        digest = hashlib.sha256(instance.GetInstanceData()).hexdigest()
    except Exception:  # noqa: BLE001 - fail closed while a refusal is pending
        return REFUSED_STATUS
    with _REFUSED_LOCK:
        return REFUSED_STATUS if _REFUSED.pop(digest, None) is not None else 0


def received_instance(plugin, data: bytes, origin):
    """ReceivedInstanceCallback: strip protected instances; an exception here would store the
    instance as received, so everything is caught and the instance refused."""
    from .receiver import KEEP, MODIFY, might_be_protected

    try:
        settings = plugin.settings
        settings.current()
        receiver = settings.receiver
        if receiver is None:
            if settings.config is not None and settings.config.receiver is None:
                return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None  # not a receiving site
            if not might_be_protected(data):
                return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
            log("protected instance refused: the receiver is not loaded (" + str(settings.receiver_error
                or settings.error) + ")")
            return _refuse(data, origin)
        if not might_be_protected(data) and receiver.config.plain == "store":
            receiver.counts["plain"] += 1
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        action, out = plugin.ingest.call(receiver.process, data, str(origin), timeout=PLAN_TIMEOUT_S)
        if action == MODIFY:
            return orthanc.ReceivedInstanceAction.MODIFY, out
        if action == KEEP:
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        return _refuse(data, origin)
    except BaseException as exc:  # noqa: BLE001 - fail closed
        try:
            log(f"incoming instance refused: {type(exc).__name__}: {exc}")
        finally:
            return orthanc.ReceivedInstanceAction.DISCARD, None  # noqa: B012
