"""Reading and durably writing DICOM files.

Writes go to a temporary name in the target folder, are fsynced, renamed, and the folder is
fsynced: a crash leaves either the old state or the complete file, never half a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .errors import InvalidInputError, MiadmarkError, safe_reason
from .limits import parse_untrusted


def parse_all(ds: Dataset) -> Dataset:
    """Turn every raw element into a parsed one (in place): encoding is then stable across writes."""
    for _ in ds.iterall():
        pass
    for _ in getattr(ds, "file_meta", ()):
        pass
    return ds


def read_dicom(path: str | os.PathLike) -> Dataset:
    """Read a DICOM file fully (pixel data included) or raise InvalidInputError with the reason.

    The file's bytes are kept with the dataset (see source_bytes): protect records them exactly.
    """
    try:
        if hasattr(path, "read"):
            data = path.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
        raw = pydicom.dcmread(io.BytesIO(data))
        if cut := truncation(raw, len(data)):
            raise InvalidInputError(cut)
        ds = parse_untrusted(raw)  # parse now: a truncated file fails here, not later
    except InvalidDicomError:
        raise InvalidInputError("not a DICOM file (no DICM preamble or valid header)") from None
    except MiadmarkError:
        raise
    except RecursionError:
        raise InvalidInputError("unreadable DICOM: sequences nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - zlib.error, BytesLengthException, ...: all unreadable
        raise InvalidInputError(f"unreadable DICOM ({safe_reason(exc)})") from None
    if "PixelData" in ds and len(ds.PixelData or b"") == 0:
        raise InvalidInputError("truncated file: Pixel Data is empty")
    return remember_source(ds, data)


def truncation(ds: Dataset, size: int) -> str | None:
    """Why a freshly read dataset of a `size`-byte file is cut short, or None. pydicom stops without a word at
    an element header cut by the end of the file and keeps a value shorter than its declared length."""
    meta = getattr(ds, "file_meta", None)
    if not ds.keys() or (meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian):
        return None  # a deflated body's offsets are not the file's
    tag = max(ds.keys())
    last = ds.get_item(tag)  # the element as read (offset and declared length), not converted
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:  # undefined length: its delimiters tell
        return None
    name = f"({tag.group:04X},{tag.element:04X})"
    if tell + length > size:
        return f"truncated file: element {name} declares {length} bytes, {size - tell} are present"
    if 0 < size - (tell + length) < 8:  # less than an element header left after the last element
        return f"truncated file: it ends inside the element header after {name}"
    return None


def dataset_from_bytes(data: bytes) -> Dataset:
    try:
        ds = parse_untrusted(pydicom.dcmread(io.BytesIO(data)))
    except MiadmarkError:
        raise
    except RecursionError:
        raise InvalidInputError("unreadable DICOM: sequences nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is invalid input
        raise InvalidInputError(f"unreadable DICOM ({safe_reason(exc)})") from None
    return remember_source(ds, bytes(data))


# ---- the exact bytes a dataset was read from --------------------------------------------------------
# pydicom re-encodes what it writes (group lengths dropped, padding and VRs normalised); protect
# must record the original FILE, so the readers above keep its bytes with the dataset, together
# with the hash of the dataset's encoding at read time: a dataset changed after reading no longer
# matches, and its source bytes are then not used.

_SOURCE = "_miadmark_source"  # lower case: pydicom stores it as a plain attribute, not an element


def remember_source(ds: Dataset, data: bytes) -> Dataset:
    try:
        setattr(ds, _SOURCE, (data, hashlib.sha256(canonical_bytes(ds)).digest()))
    except Exception:  # noqa: BLE001 - a dataset pydicom cannot write has no usable source; protect refuses it
        pass
    return ds


def source_bytes(ds: Dataset) -> bytes | None:
    """The bytes ds was read from, if ds still encodes exactly as it did when read; else None."""
    source = getattr(ds, _SOURCE, None)
    if source is None:
        return None
    data, digest = source
    try:
        return data if hashlib.sha256(canonical_bytes(ds)).digest() == digest else None
    except Exception:  # noqa: BLE001 - changed into something pydicom cannot write: not its source any more
        return None


def original_file_bytes(ds: Dataset) -> bytes:
    """The file ds came from, byte for byte; a dataset made or changed in memory: as pydicom writes it."""
    data = source_bytes(ds)
    return data if data is not None else dataset_to_bytes(ds)


def forget_source(ds: Dataset) -> None:
    if _SOURCE in vars(ds):
        delattr(ds, _SOURCE)


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode as a DICOM file (preamble + file meta + dataset) in the dataset's own transfer syntax."""
    buf = io.BytesIO()
    # dcmwrite, not save_as: save_as refuses a dataset read as big endian that is now little endian
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def canonical_bytes(ds: Dataset) -> bytes:
    """The dataset as pydicom writes it in its own transfer syntax, file meta as it is.

    This is what "bit-exact" is measured on: a stripped original encodes to exactly these bytes.
    (Retired group-length elements are not written by pydicom, nor by network encoders.)
    """
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def body_bytes(ds: Dataset) -> bytes:
    """The dataset without preamble and File Meta, in its transfer syntax.

    What a DICOM network transfer carries: File Meta is never sent over an association, so a
    receiving node's file meta is its own and deliveries are compared on these bytes.
    """
    full = canonical_bytes(ds)
    offset = 132 if full[128:132] == b"DICM" else 0
    if offset:
        meta_length = int.from_bytes(full[140:144], "little")  # (0002,0000) UL value
        offset = 144 + meta_length
    return full[offset:]


def write_atomic(data: bytes, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Write bytes durably: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_dicom_atomic(ds: Dataset, path: str | os.PathLike) -> Path:
    return write_atomic(dataset_to_bytes(ds), path)

