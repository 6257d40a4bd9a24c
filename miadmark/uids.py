"""Stable, unlinkable UIDs for what protect (and de-identification) emits.

A UID made here is `2.25.<n>`, n a UUID version 8 (RFC 9562, custom) whose 122 free bits are the
first bits of HMAC-SHA256(site secret, kind | original UID | scope):
* the same original sent to the same scope twice gets the same UID, so a resend after a crash or a
  manual re-export is the same object at a keyless destination, which can deduplicate it;
* another scope (destination, recipient set) gets another UID: two destinations cannot link
  their copies by UID;
* without the site secret nobody can compute the mapping or link a UID back to the original.

The site secret is HKDF-SHA256 of the signer's private key (PKCS#8 DER) with a fixed label, so
no new secret file has to be kept: whoever holds the signing key can reproduce the UIDs, nobody
else can. Changing the signing key changes every UID it makes (old objects keep theirs).

The scope is the destination's name when the caller knows it (gateway, Orthanc plugin), otherwise
the sorted SHA-256 fingerprints of the recipient certificates.

What protect derives: the SOP Instance UID and the Series Instance UID (a derived series, the DICOM
way for derived images: a viewer never mixes watermarked and clean slices in one series). The Study
Instance UID stays: the protected series belongs to the original's study (on a de-identified route
the study UID is already the de-identified one). The record restores the originals.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_LABEL = b"miadmark site secret for derived UIDs v1"

# kinds: what the UID names; the same original UID gives unrelated UIDs for different kinds
SOP_INSTANCE, SERIES, DEIDENTIFIED = b"sop", b"series", b"deid"


def site_secret(private_key) -> bytes:
    """32 bytes derived from the signer's private key; outsiders cannot compute them."""
    der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SECRET_LABEL).derive(der)


def scope_of(destination: str | None, recipients: Sequence[x509.Certificate]) -> str:
    """What makes two protections "the same export": the destination name, else the recipient set."""
    if destination:
        return f"destination:{destination}"
    prints = sorted(cert.fingerprint(hashes.SHA256()).hex() for cert in recipients)
    return "recipients:" + ",".join(prints)


def derived_uid(secret: bytes, kind: bytes, original_uid: str, scope: str) -> str:
    """A 2.25 UID (at most 44 characters) from the keyed hash of (kind, original UID, scope)."""
    message = b"\0".join([kind, original_uid.strip().rstrip("\0").encode("ascii", "replace"),
                          scope.encode("utf-8")])
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    value = int.from_bytes(digest[:16], "big")
    value &= ~(0xF << 76) & ~(0xC << 60)  # clear version and variant bits
    value |= (8 << 76) | (0x8 << 60)  # version 8, RFC 4122/9562 variant
    return f"2.25.{uuid.UUID(int=value).int}"


class UidMaker:
    """derived_uid for one site secret and one scope (one protect run to one destination)."""

    def __init__(self, secret: bytes, scope: str) -> None:
        self.secret, self.scope = secret, scope

    def derive(self, kind: bytes, original_uid: str) -> str:
        return derived_uid(self.secret, kind, original_uid, self.scope)

    def keyed_int(self, kind: bytes, value: str, modulus: int) -> int:
        """A keyed number in [0, modulus) for value (e.g. a per-patient date shift)."""
        digest = hmac.new(self.secret, b"\0".join([kind, value.encode("utf-8"), self.scope.encode("utf-8")]),
                          hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") % modulus
