"""The spread mark's per-image geometry key, torch-free (the core computes it for every frame it protects)."""

from __future__ import annotations

import hashlib
import hmac

from .profile import ImageContext

MARK_KEY_LABEL = b"miadmark spread-mark geometry v1"


def mark_key(secret: bytes, sop_instance_uid: str, frame: int) -> bytes:
    """HMAC-SHA256(site secret, label | instance | frame): outsiders without the secret cannot predict an
    image's lattice from its UID, and no two instances or frames share one."""
    msg = MARK_KEY_LABEL + b"\0" + sop_instance_uid.encode() + b"\0" + str(frame).encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def geometry_seed(ctx: ImageContext | None, seed: int, index: int) -> int:
    """64-bit seed of one image's geometry: its keyed `mark_key` when the core gave one, else the profile's
    seed, the SOP Instance UID and the image's index in the batch (evaluation, tests)."""
    material = ctx.mark_key if ctx is not None and ctx.mark_key else hashlib.sha256(
        f"{seed}|{ctx.sop_instance_uid if ctx else ''}|{index}".encode()).digest()
    return int.from_bytes(material[:8], "big")
