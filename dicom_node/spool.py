"""The gateway's spool folder: received originals, protected copies, the queue database (0600 files in
0700 folders: they hold patient data).

    <spool>/objects/<SOPInstanceUID>.<receipt>.dcm          originals as received (meta + dataset bytes)
    <spool>/protected/<SOPInstanceUID>.<receipt>.<key>.dcm  protected copy per destination and rule options
    <spool>/queue.sqlite                                    the work queue (WAL)

<receipt> is unique per C-STORE received, so a repeated receipt of one instance never shares a
file with an earlier one still being delivered or cleaned up (no lock between the two sides).

A protected copy is made once and kept until delivered, so a resend after a crash sends the same
object (same new SOP Instance UID) and the destination sees a harmless duplicate.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from miadmark.private import private_dir, write_private
from miadmark.receive_policy import safe_uid


class Spool:
    def __init__(self, root: str | Path):
        self.root = private_dir(root)
        self.objects = private_dir(self.root / "objects")
        self.protected = private_dir(self.root / "protected")
        self.queue_path = self.root / "queue.sqlite"

    def store(self, data: bytes, sop_uid: str) -> str:
        """Durably write a received instance; returns its name relative to the spool root."""
        name = safe_uid(sop_uid) or "x" + hashlib.sha256(str(sop_uid).encode()).hexdigest()[:32]
        rel = f"objects/{name}.{uuid.uuid4().hex[:12]}.dcm"
        write_private(data, self.root / rel)
        return rel

    def path(self, rel: str) -> Path:
        return self.root / rel

    def protected_path(self, rel: str, variant: tuple) -> Path:
        """variant: what makes the copy (destination, recipients, profile, de-identification options)."""
        key = hashlib.sha256(repr(variant).encode()).hexdigest()[:12]
        return self.protected / f"{Path(rel).stem}.{key}.dcm"

    def protected_copies(self, rel: str) -> list[Path]:
        return list(self.protected.glob(f"{Path(rel).stem}.{'?' * 12}.dcm"))

    def remove(self, rels: list[str]) -> None:
        """Delete spooled originals and their protected copies (once no job needs them)."""
        for rel in rels:
            for path in [self.path(rel), *self.protected_copies(rel)]:
                path.unlink(missing_ok=True)
