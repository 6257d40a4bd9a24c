"""The one quarantine writer (gateway, receiving node, Orthanc plugin): objects that could not be
protected or opened, each with a reason file beside it.

    <folder>/<SOPInstanceUID or unknown>-<sha256[:16]>.dcm          the object as it arrived
    <folder>/<SOPInstanceUID or unknown>-<sha256[:16]>.reason.json  {"reason", "time", ...} (no patient data)

Named by content: the same object quarantined again (a sender retrying a refusal) is written once
and its reason file counts the repeats, so retries cannot fill the disk. Files are 0600 in a 0700
folder. Raises OSError when it cannot write: the caller must then keep the object where it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

from .private import write_private

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_lock = threading.Lock()


def _name_uid(uid: str | None) -> str:
    uid = str(uid or "").strip().rstrip("\x00")
    return uid if len(uid) <= 64 and _UID_RE.match(uid) else "unknown"


def quarantine(folder: str | os.PathLike, data: bytes | None, *, reason: str, sop_uid: str | None = None,
               source: Path | None = None, **details) -> Path:
    """Write the object and its reason file durably (once per content); returns the object's path."""
    folder = Path(folder)
    if data is None:
        data = Path(source).read_bytes() if source is not None else b""
    name = f"{_name_uid(sop_uid)}-{hashlib.sha256(data).hexdigest()[:16]}"
    obj, why = folder / f"{name}.dcm", folder / f"{name}.reason.json"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _lock:
        if obj.exists() and why.exists():
            try:
                info = json.loads(why.read_text())
                info["repeats"] = int(info.get("repeats", 0)) + 1
                info["last_time"] = now
                write_private((json.dumps(info, indent=2) + "\n").encode(), why)
            except (ValueError, OSError):
                pass  # the object is safe; a count is not worth failing for
            return obj
        write_private(data, obj)
        info = {"reason": reason, "time": now, "sop_instance_uid": _name_uid(sop_uid), **details}
        write_private((json.dumps(info, indent=2, default=str) + "\n").encode(), why)
    return obj
