"""What the core accepts of an untrusted DICOM object before it walks, copies or decodes it.

A header costs nothing to forge: 65535 x 65535 RLE declares 4 GiB in a few bytes, a sequence nested
100,000 deep overflows every recursive walk (iterall, deepcopy, the writer). So the declared image
size is checked against a cap and against the bytes actually present, and the nesting depth is
bounded, before anything allocates or recurses. Refusals name the element, never its value
(pixel-module integers such as Rows are technical, not patient data, and are quoted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import Tag
from pydicom.uid import UID, AllTransferSyntaxes, RLELossless

from .errors import InvalidInputError, UnsupportedImageError

MAX_SEQUENCE_DEPTH = 32  # real SR / enhanced objects nest well under 10
MAX_PIXEL_VALUES = 1 << 27  # 134 M stored values (512 x 512 x 512): ~3 GB in flight while watermarking
BITS_ALLOCATED = (1, 8, 16, 32)
JPEG_FAMILY_PREFIX = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000, HTJ2K: 8 or 16 bits allocated


def element_name(tag) -> str:
    tag = Tag(tag)
    keyword = keyword_for_tag(tag)
    return f"{keyword} {tag}" if keyword else str(tag)


def parse_untrusted(ds: Dataset) -> Dataset:
    """Parse every element in place (as dicomio.parse_all), iteratively and depth-bounded.

    An element that does not parse (wrong length for its VR, undecodable value) is named in the
    InvalidInputError; sequences deeper than MAX_SEQUENCE_DEPTH are refused before any recursion.
    """
    stack: list[tuple[Dataset, int, str]] = [(ds, 0, "")]
    if getattr(ds, "file_meta", None) is not None:
        stack.append((ds.file_meta, 0, ""))
    while stack:
        current, depth, where = stack.pop()
        if depth > MAX_SEQUENCE_DEPTH:
            raise InvalidInputError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels{where}")
        for tag in list(current.keys()):
            try:
                elem = current[tag]  # converts the raw element
                items = list(elem.value) if elem.VR == "SQ" and elem.value is not None else []
            except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, this element is malformed
                raise InvalidInputError(
                    f"element {element_name(tag)}{where} cannot be read ({type(exc).__name__})") from None
            for item in items:
                if not isinstance(item, Dataset):
                    raise InvalidInputError(f"element {element_name(tag)}{where} has a malformed item")
                stack.append((item, depth + 1, f" (in {element_name(tag)})"))
    return ds


# What protect rewrites or the writer copies into File Meta: a forged VR there makes the output unencodable.
REWRITTEN = ("SOPClassUID", "SOPInstanceUID", "ImageType", "DerivationDescription", "PhotometricInterpretation",
             "PlanarConfiguration", "PixelRepresentation", "EncryptedAttributesSequence")


def check_protectable(ds: Dataset) -> Dataset:
    """parse_untrusted, then: the elements protect rewrites and every File Meta element have their standard
    VR (private creators of group 0011, where the marker goes, are LO)."""
    parse_untrusted(ds)
    for tag in ds.keys():
        if tag.group in (0x0000, 0x0002):  # command or file meta elements in the body: no writer encodes them
            raise InvalidInputError(f"element {tag} of group {tag.group:04X} does not belong in a dataset body")
    file_meta = getattr(ds, "file_meta", None)
    elems = [ds[k] for k in REWRITTEN if k in ds] + (list(file_meta) if file_meta is not None else [])
    for elem in elems:
        try:
            standard = dictionary_VR(elem.tag)
        except KeyError:
            raise InvalidInputError(f"File Meta element {elem.tag} is not a standard element") from None
        if elem.VR != standard:
            raise InvalidInputError(f"element {element_name(elem.tag)} has VR {elem.VR}, not {standard}")
    for elem in ds.group_dataset(0x0011):
        if 0x10 <= elem.tag.element <= 0xFF and elem.VR != "LO":
            raise InvalidInputError(f"private creator {elem.tag} has VR {elem.VR}, not LO")
    return ds


@dataclass(frozen=True)
class ImageHeader:
    """The pixel-module attributes, validated; `values` is Rows x Columns x Frames x Samples."""

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    planar: int
    transfer_syntax: UID

    @property
    def values(self) -> int:
        return self.rows * self.cols * self.frames * self.samples

    @property
    def native_bytes(self) -> int:
        return math.ceil(self.values * self.bits_allocated / 8)


def _int(ds: Dataset, keyword: str, default: int | None, lo: int, hi: int) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        if default is None:
            raise InvalidInputError(f"not an image: {keyword} is missing")
        return default
    value = ds[keyword].value
    try:
        if not isinstance(value, (str, int, float)):
            raise TypeError("several values or bytes")
        number = float(value)
        if not number.is_integer():
            raise ValueError("not an integer")
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{keyword} is not a single integer") from None
    if not lo <= number <= hi:
        raise UnsupportedImageError(f"{keyword} {number} is outside {lo}..{hi}")
    return number


def check_pixel_header(ds: Dataset, max_values: int = MAX_PIXEL_VALUES) -> ImageHeader:
    """The validated header of an image, or a refusal: nothing here decodes or allocates pixel data."""
    rows = _int(ds, "Rows", None, 1, 65535)
    cols = _int(ds, "Columns", None, 1, 65535)
    samples = _int(ds, "SamplesPerPixel", 1, 1, 4)
    if samples not in (1, 3):
        raise UnsupportedImageError(f"SamplesPerPixel {samples} is not supported (1 or 3)")
    bits_allocated = _int(ds, "BitsAllocated", None, 1, 64)
    if bits_allocated not in BITS_ALLOCATED:
        raise UnsupportedImageError(f"BitsAllocated {bits_allocated} is not supported ({BITS_ALLOCATED})")
    bits_stored = _int(ds, "BitsStored", bits_allocated, 1, bits_allocated)
    high_bit = _int(ds, "HighBit", bits_stored - 1, 0, 63)
    if high_bit != bits_stored - 1:
        raise UnsupportedImageError(f"HighBit {high_bit} / BitsStored {bits_stored} layout is not supported")
    signed = _int(ds, "PixelRepresentation", None, 0, 1) == 1  # Type 1: guessing would misread signed data
    planar = _int(ds, "PlanarConfiguration", 0, 0, 1) if samples > 1 else 0
    frames = _int(ds, "NumberOfFrames", 1, 0, max_values) or 1
    file_meta = getattr(ds, "file_meta", None)
    ts = UID(str(file_meta.get("TransferSyntaxUID", "") if file_meta is not None else ""))
    if ts not in AllTransferSyntaxes:  # the original could not be re-encoded, so never restored exactly
        raise UnsupportedImageError("File Meta Transfer Syntax UID is missing or not a known transfer syntax")
    header = ImageHeader(rows, cols, frames, samples, bits_allocated, bits_stored, signed, planar, ts)
    if header.values > max_values:
        raise UnsupportedImageError(
            f"declared image Rows {rows} x Columns {cols} x {frames} frame(s) x {samples} sample(s) "
            f"= {header.values} values exceeds the limit of {max_values}")
    _check_pixel_data(ds, header)
    return header


def _check_pixel_data(ds: Dataset, header: ImageHeader) -> None:
    if "PixelData" not in ds:
        return  # decode() says what is missing
    data = ds.PixelData
    if data is None or not isinstance(data, (bytes, bytearray)):
        raise InvalidInputError("Pixel Data is empty")
    if not header.transfer_syntax.is_encapsulated:
        if len(data) < header.native_bytes:
            raise InvalidInputError(f"truncated Pixel Data: {len(data)} bytes, the header declares "
                                    f"{header.native_bytes}")
        return
    if header.transfer_syntax.startswith(JPEG_FAMILY_PREFIX) and header.bits_allocated not in (8, 16):
        raise UnsupportedImageError(f"BitsAllocated {header.bits_allocated} is not valid for a JPEG family "
                                    "transfer syntax (8 or 16)")
    if data[:4] != b"\xfe\xff\x00\xe0":
        raise InvalidInputError("Pixel Data is not encapsulated as its transfer syntax requires")
    if header.transfer_syntax == RLELossless:
        _check_rle(data, header)
    elif header.transfer_syntax.startswith(JPEG_FAMILY_PREFIX):
        _check_codestream(_first_frame(data, header), header)


def _first_frame(data: bytes, header: ImageHeader) -> bytes:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(data, number_of_frames=header.frames))
    except Exception as exc:  # noqa: BLE001 - malformed item structure or offset table
        raise InvalidInputError(f"encapsulated Pixel Data is malformed ({type(exc).__name__})") from None


def _check_codestream(frame: bytes, header: ImageHeader) -> None:
    """A JPEG / JPEG-LS / JPEG 2000 decoder allocates what its own stream header says, not what Rows and
    Columns say: the two must agree before the stream reaches a decoder."""
    size = codestream_size(frame)
    if size is not None and size != (header.rows, header.cols):
        raise InvalidInputError(f"the compressed frame declares {size[0]} x {size[1]} pixels, the header "
                                f"Rows {header.rows} x Columns {header.cols}")


SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # JPEG SOFn and JPEG-LS SOF55


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 frame declares; None when no size marker is found."""
    if frame[:4] == b"\x00\x00\x00\x0c":  # JP2 boxes around the codestream
        at = frame.find(b"\xff\x4f\xff\x51")
        frame = frame[at:] if at >= 0 else b""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # J2K SOC, SIZ (15444-1 A.5.1)
        x, y, x0, y0 = (int.from_bytes(frame[i:i + 4], "big") for i in (8, 12, 16, 20))
        return y - y0, x - x0
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    for _ in range(256):  # markers before the frame header; a stream that loops is left to the decoder
        while at < len(frame) and frame[at] == 0xFF and at + 1 < len(frame) and frame[at + 1] == 0xFF:
            at += 1  # fill bytes
        if at + 9 > len(frame) or frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker in SOF_MARKERS:
            return int.from_bytes(frame[at + 5:at + 7], "big"), int.from_bytes(frame[at + 7:at + 9], "big")
        at += 2 + int.from_bytes(frame[at + 2:at + 4], "big")
    return None


def _check_rle(data: bytes, header: ImageHeader) -> None:
    """The RLE header of the first frame must declare the segments the header implies (PS3.5 G.4)."""
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(data)
        next(fragments)  # the Basic Offset Table
        first = next(fragments)
    except Exception as exc:  # noqa: BLE001 - malformed item structure
        raise InvalidInputError(f"encapsulated Pixel Data is malformed ({type(exc).__name__})") from None
    if len(first) < 64:
        raise InvalidInputError("RLE frame is shorter than its 64-byte header")
    segments = int.from_bytes(first[:4], "little")
    expected = header.samples * math.ceil(header.bits_allocated / 8)
    if segments != expected:
        raise InvalidInputError(f"RLE header declares {segments} segment(s), the image needs {expected}")
    offsets = [int.from_bytes(first[4 + 4 * i:8 + 4 * i], "little") for i in range(segments)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(first):
        raise InvalidInputError("RLE segment offsets are not inside the frame")
