"""Hostile DICOM files built from the real ones in ../shared/data (issue 14, findings 4-6 and 10)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate

from conftest import DICOM_DATA

TS = DICOM_DATA / "transfer_syntaxes"
CT = sorted((DICOM_DATA / "ct_chest_lidc0314" / "data").glob("*.dcm"))
SECRET = b"SECRET-VALUE"  # 12 bytes, as long as the placeholder it replaces
PLACEHOLDER = "1.2345678901"


def huge_rle(dst: Path) -> Path:
    """65535 x 65535 x 16 bits RLE in a few bytes: 8 GiB once decoded."""
    ds = pydicom.dcmread(TS / "RLELossless" / "MR_small_RLE.dcm")
    ds.Rows = ds.Columns = 65535
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (66).to_bytes(4, "little") + b"\0" * 52
    ds.PixelData = encapsulate([header + b"\x81\x00" * 2])
    ds.save_as(dst)
    return dst


def jpeg_bits_32(dst: Path) -> Path:
    """A JPEG object whose header says BitsAllocated 32: gdcm aborts the process on it (SIGABRT)."""
    ds = pydicom.dcmread(TS / "JPEGBaseline" / "SC_rgb_dcmtk_+eb+cy+s4.dcm")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.save_as(dst)
    return dst


def malformed_ds(dst: Path) -> Path:
    """RescaleSlope holds text that is not a number (and must never be echoed into an error)."""
    ds = pydicom.dcmread(CT[0])
    ds.RescaleSlope = PLACEHOLDER
    ds.save_as(dst)
    data = dst.read_bytes()
    assert data.count(PLACEHOLDER.encode()) == 1
    dst.write_bytes(data.replace(PLACEHOLDER.encode(), SECRET))
    return dst


def nested_sequences(dst: Path, depth: int = 100_000) -> Path:
    """A private sequence nested `depth` items deep, appended after Pixel Data (Explicit VR LE)."""
    data = (TS / "LittleEndianExplicit" / "MR_small.dcm").read_bytes()
    head = b"\xf3\x7f\x00\x10SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    tail = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    dst.write_bytes(data + head * depth + tail * depth)
    return dst


def short_pixel_data(dst: Path) -> Path:
    ds = pydicom.dcmread(CT[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2]
    ds.save_as(dst)
    return dst


def bad_vr_sop_class(dst: Path, source: Path | None = None, vr: bytes = b"ZZ") -> Path:
    """A real CT slice written Explicit VR Little Endian whose SOP Class UID (0008,0016) element carries a
    corrupted VR (issue 22, item 5): pydicom raises NotImplementedError when the element is read."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(source or CT[0])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    data = dst.read_bytes()
    element = b"\x08\x00\x16\x00UI"  # group, element (little endian), then the VR
    at = data.index(element, 132 + 12)  # after the preamble and past File Meta's own SOP class (0002,0002)
    dst.write_bytes(data[:at + 4] + vr + data[at + 6:])
    return dst
