"""The restoration record: build, sign, encrypt (CMS), open, verify.

Wire format (DICOM PS3.15 attribute confidentiality, so other tools recognise it):

  Encrypted Attributes Sequence (0400,0500), one item:
    Encrypted Content Transfer Syntax UID (0400,0510) = Explicit VR Little Endian
    Encrypted Content (0400,0520) = DER CMS EnvelopedData (AES-256-CBC, one RSA RecipientInfo per
                                    authorized recipient certificate; opens with `openssl cms -decrypt`)

The decrypted content is a DICOM dataset, Explicit VR Little Endian:

  (0400,0550) Modified Attributes Sequence: one item, the original value of every top-level
              attribute protect changed or removed (UIDs, ImageType, Photometric...)
  private block "MIADMARK RECORD 1.0" in group 0011:
    (0011,xx01) UT  JSON: engine version, profile, per-frame watermark parameters
    (0011,xx02) CS  pixel payload kind (miadmark.pixel_payload), the payload's format version: for a native
                    original RESIDUAL_ZSTD (original minus protected words, predicted, zstd; or ORIGINAL_ZSTD where
                    smaller) or CHANGED_WORDS (mask of the changed words and their original values,
                    LZMA); for an encapsulated original ORIGINAL_ZSTD or ORIGINAL (its Pixel Data bytes, zstd
                    or LZMA). Every kind stays readable: strip decodes records of any of them.
    (0011,xx03) OB  pixel payload (padded to even length; each codec stops at its stream's end)
    (0011,xx04) AT  tags protect added (removed again by strip)
    (0011,xx05) OB  original File Meta Information, Explicit VR LE encoding
    (0011,xx06) LO  SHA-256 (hex) of the original file's bytes (records without xx0A: of the
                    original's canonical encoding, see canonical_bytes)
    (0011,xx07) UI  SOP Instance UID of the protected object this record belongs to
    (0011,xx08) CS  original Pixel Data VR
    (0011,xx09) LO  word type of CHANGED_WORDS (<u1, <u2, <u4)
    (0011,xx0A) OB  the original file (preamble, file meta, every element as read) without the
                    Pixel Data value, LZMA-compressed: strip rebuilds the file byte for byte
    (0011,xx0B) UL  offset in xx0A's decompressed bytes where the Pixel Data value goes back
                    (absent: xx0A is the whole original file)
  private block "MIADMARK SIGNATURE 1.0" in group 7FF1 (sorts last, so it follows the signed bytes):
    (7FF1,xx01) LO  RSASSA-PSS-SHA256
    (7FF1,xx02) UT  signer certificate (PEM)
    (7FF1,xx03) OB  signature over every byte of the content that precedes group 7FF1

Sign-then-encrypt: the signature and signer certificate travel inside the encrypted content, so
only recipients learn who protected the object; AES-CBC has no integrity of its own, the
signature and the original hash are what make tampering fail.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from .errors import NoRecipientKeyError, RecordCorruptError, SignatureInvalidError
from .keys import Identity

RECORD_CREATOR = "MIADMARK RECORD 1.0"
SIGNATURE_CREATOR = "MIADMARK SIGNATURE 1.0"
RECORD_GROUP, SIGNATURE_GROUP = 0x0011, 0x7FF1
SIGNATURE_ALGORITHM = "RSASSA-PSS-SHA256"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass
class Record:
    """The plaintext of a restoration record."""

    modified: Dataset  # original values of changed/removed top-level attributes
    params: dict[str, Any]
    payload_kind: str  # one of miadmark.pixel_payload's kinds
    payload: bytes
    added_tags: list[int]
    file_meta: bytes
    original_sha256: str
    protected_uid: str
    pixel_vr: str
    word_type: str
    original_file: bytes | None = None  # LZMA of the original file less its Pixel Data value (None: old record)
    pixel_offset: int | None = None  # where the Pixel Data value goes back in it (None: not cut)
    signer: x509.Certificate | None = field(default=None)


# ---- plaintext encoding -------------------------------------------------------------------------

def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _decode(data: bytes) -> Dataset:
    return read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)


def encode_file_meta(file_meta: Dataset) -> bytes:
    return _encode(file_meta)


def decode_file_meta(data: bytes) -> Dataset:
    from pydicom.dataset import FileMetaDataset

    return FileMetaDataset(_decode(data))


def _record_dataset(rec: Record) -> Dataset:
    ds = Dataset()
    ds.ModifiedAttributesSequence = Sequence([rec.modified])
    block = ds.private_block(RECORD_GROUP, RECORD_CREATOR, create=True)
    block.add_new(0x01, "UT", json.dumps(rec.params, sort_keys=True))
    block.add_new(0x02, "CS", rec.payload_kind)
    block.add_new(0x03, "OB", _even(rec.payload))  # every payload codec ignores the pad byte
    block.add_new(0x04, "AT", list(rec.added_tags))
    block.add_new(0x05, "OB", rec.file_meta)
    block.add_new(0x06, "LO", rec.original_sha256)
    block.add_new(0x07, "UI", rec.protected_uid)
    block.add_new(0x08, "CS", rec.pixel_vr)
    block.add_new(0x09, "LO", rec.word_type)
    if rec.original_file is not None:
        block.add_new(0x0A, "OB", _even(rec.original_file))  # LZMA ignores the pad byte
        if rec.pixel_offset is not None:
            block.add_new(0x0B, "UL", rec.pixel_offset)
    return ds


def _parse_record(ds: Dataset) -> Record:
    try:
        block = ds.private_block(RECORD_GROUP, RECORD_CREATOR)
        added = block[0x04].value
        added = [] if added is None else [int(added)] if isinstance(added, int) else [int(t) for t in added]
        return Record(
            modified=ds.ModifiedAttributesSequence[0],
            params=json.loads(block[0x01].value),
            payload_kind=str(block[0x02].value),
            payload=bytes(block[0x03].value),
            added_tags=added,
            file_meta=bytes(block[0x05].value),
            original_sha256=str(block[0x06].value),
            protected_uid=str(block[0x07].value),
            pixel_vr=str(block[0x08].value),
            word_type=str(block[0x09].value),
            original_file=bytes(block[0x0A].value) if 0x0A in block else None,
            pixel_offset=int(block[0x0B].value) if 0x0B in block else None,
        )
    except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
        raise RecordCorruptError(f"restoration record is incomplete ({type(exc).__name__})") from None


def _even(data: bytes) -> bytes:
    """OB values must have even length; pad explicitly so the stored bytes are exactly these."""
    return data + b"\0" if len(data) % 2 else data


# ---- sign / verify ------------------------------------------------------------------------------

def sign_record(rec: Record, signer: Identity) -> bytes:
    """Plaintext bytes: the record dataset followed by its signature block."""
    body = _encode(_record_dataset(rec))
    signature = signer.key.sign(body, PSS, hashes.SHA256())
    sig = Dataset()
    block = sig.private_block(SIGNATURE_GROUP, SIGNATURE_CREATOR, create=True)
    block.add_new(0x01, "LO", SIGNATURE_ALGORITHM)
    block.add_new(0x02, "UT", signer.cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    block.add_new(0x03, "OB", signature)
    return body + _encode(sig)


def verify_record(plaintext: bytes) -> Record:
    """Parse the plaintext and verify its signature; the signer's certificate is returned in the Record.

    Whether that signer is trusted is the caller's decision (strip checks it against `trust`).
    """
    try:
        full = _decode(plaintext)
        sig_ds = Dataset()
        for elem in full.group_dataset(SIGNATURE_GROUP):
            sig_ds.add(elem)
        tail = _encode(sig_ds)
        split = len(plaintext) - len(tail)
        if plaintext[split:] != tail:
            raise ValueError("signature block is not the last part of the record")
        body_ds = _decode(plaintext[:split])
        block = sig_ds.private_block(SIGNATURE_GROUP, SIGNATURE_CREATOR)
        algorithm = str(block[0x01].value)
        signer = x509.load_pem_x509_certificate(str(block[0x02].value).encode("ascii"))
        signature = bytes(block[0x03].value)
    except Exception as exc:  # noqa: BLE001 - any parse failure of decrypted bytes is corruption
        raise RecordCorruptError(f"restoration record does not parse ({type(exc).__name__})") from None
    if algorithm != SIGNATURE_ALGORITHM:
        raise SignatureInvalidError(f"unsupported signature algorithm (not {SIGNATURE_ALGORITHM})")
    try:
        signer.public_key().verify(signature, plaintext[:split], PSS, hashes.SHA256())
    except (InvalidSignature, TypeError, ValueError):
        raise SignatureInvalidError("record signature does not verify (record altered or signature swapped)") \
            from None
    rec = _parse_record(body_ds)
    rec.signer = signer
    return rec


# ---- encrypt / decrypt --------------------------------------------------------------------------

def encrypt(plaintext: bytes, recipients: list[x509.Certificate]) -> bytes:
    if not recipients:
        raise ValueError("at least one recipient certificate is required")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(plaintext)
    for cert in recipients:
        builder = builder.add_recipient(cert)
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])  # no MIME line-ending rewrite


def _recipient_infos(cms_der: bytes) -> list:
    try:
        info = asn1_cms.ContentInfo.load(cms_der)
        if info["content_type"].native != "enveloped_data":
            raise ValueError("not EnvelopedData")
        rids = [ri.chosen["rid"].chosen for ri in info["content"]["recipient_infos"]]
        for rid in rids:  # asn1crypto parses lazily: parse here, inside the try, what the callers read
            rid["issuer"].native, rid["serial_number"].native
        return rids
    except Exception as exc:  # noqa: BLE001 - whatever asn1crypto raises, the content is not CMS
        raise RecordCorruptError(f"Encrypted Content is not a CMS EnvelopedData ({type(exc).__name__})") from None


def recipients_of(cms_der: bytes) -> list[tuple[str, int]]:
    """(issuer, serial) of each RecipientInfo, read without any key."""
    return [(rid["issuer"].human_friendly, int(rid["serial_number"].native)) for rid in _recipient_infos(cms_der)]


def der_exact(data: bytes) -> bytes:
    """The DER object without the pad byte DICOM adds to odd-length OB values."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        header, length = 2, first
    else:
        n = first & 0x7F
        header, length = 2 + n, int.from_bytes(data[2:2 + n], "big")
    return data[: header + length]


def decrypt(cms_der: bytes, keyring: list[Identity]) -> bytes:
    """Plaintext, using the first identity of the keyring that the record is addressed to."""
    cms_der = der_exact(cms_der)
    ids = {(rid["issuer"].dump(), int(rid["serial_number"].native)) for rid in _recipient_infos(cms_der)}
    holders = [ident for ident in keyring
               if (ident.cert.issuer.public_bytes(), ident.cert.serial_number) in ids]
    if not holders:
        raise NoRecipientKeyError(f"none of the {len(keyring)} key(s) held is a recipient of this record "
                                  f"({len(ids)} recipient(s))")
    try:
        return pkcs7.pkcs7_decrypt_der(cms_der, holders[0].cert, holders[0].key, [])
    except UnsupportedAlgorithm:
        raise RecordCorruptError("restoration record uses an unsupported algorithm (altered identifier)") from None
    except (ValueError, TypeError):
        raise RecordCorruptError("restoration record does not decrypt (tampered, or key does not match)") \
            from None
