"""Reading and durably writing DICOM files.

Writes go to a temporary name in the target folder, are fsynced, renamed, and the folder is
fsynced: a crash leaves either the old state or the complete file, never half a file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

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
    """Read a DICOM file fully (pixel data included) or raise InvalidInputError with the reason."""
    try:
        ds = parse_untrusted(pydicom.dcmread(path))  # parse now: a truncated file fails here, not later
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
    return ds


def dataset_from_bytes(data: bytes) -> Dataset:
    try:
        return parse_untrusted(pydicom.dcmread(io.BytesIO(data)))
    except MiadmarkError:
        raise
    except RecursionError:
        raise InvalidInputError("unreadable DICOM: sequences nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is invalid input
        raise InvalidInputError(f"unreadable DICOM ({safe_reason(exc)})") from None


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

