"""Quarantine: objects that could not be protected or opened, each with a reason file beside it.

    <folder>/<name>.dcm          the object as it arrived (never dropped)
    <folder>/<name>.reason.json  {"reason", "error", "time", "calling_ae", ...} (no patient data)
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from miadmark.dicomio import write_atomic

from .spool import safe_uid


def quarantine(folder: str | Path, data: bytes | None, *, reason: str, sop_uid: str | None = None,
               source: Path | None = None, **details) -> Path:
    """Write the object and its reason file durably; returns the object's path."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"{stamp}-{safe_uid(sop_uid or '') or 'unknown'}-{uuid.uuid4().hex[:8]}"
    if data is None and source is not None:
        data = source.read_bytes()
    obj = write_atomic(data or b"", folder / f"{name}.dcm")
    info = {"reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sop_instance_uid": safe_uid(sop_uid or ""), **details}
    write_atomic((json.dumps(info, indent=2) + "\n").encode(), folder / f"{name}.reason.json")
    return obj
