"""The original file, cut around its Pixel Data value, so the record keeps it byte for byte.

The record keeps the original file without the Pixel Data value (header, file meta, group lengths,
padding, VRs as read, anything after Pixel Data: a few KB, LZMA) and, separately, what the pixel
payload needs (the changed words, or the encapsulated bitstream). Strip puts the rebuilt value back
at its offset: the original file, byte for byte.
"""

from __future__ import annotations

import io
import lzma

from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from .errors import RecordCorruptError

PIXEL_DATA = 0x7FE00010


def pixel_value_span(data: bytes, pixel_value: bytes) -> tuple[int, int] | None:
    """(start, end) of the top-level Pixel Data value in the file bytes, if it holds exactly pixel_value.

    None when it cannot be located exactly (deflated data set, no Pixel Data, another value):
    the record then keeps the whole file.
    """
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        syntax = UID(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        if syntax == DeflatedExplicitVRLittleEndian:
            return None
        for elem in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=256):
            if elem.tag == PIXEL_DATA:
                start = elem.value_tell
                end = start + len(pixel_value)
                return (start, end) if data[start:end] == pixel_value else None
    except Exception:  # noqa: BLE001 - whatever pydicom raises, the span is unknown: keep the whole file
        return None
    return None


def cut(data: bytes, span: tuple[int, int] | None) -> bytes:
    """LZMA of the file without the Pixel Data value (the whole file when span is None).

    Preset 0: on a CT slice's 2 KB of header, preset 6 spends ~10 ms setting up its 8 MiB dictionary for 5 % fewer
    bytes; every preset decodes the same way."""
    rest = data if span is None else data[:span[0]] + data[span[1]:]
    return lzma.compress(rest, preset=0)


def join(compressed_rest: bytes, offset: int | None, pixel_value: bytes) -> bytes:
    try:
        rest = lzma.LZMADecompressor().decompress(compressed_rest)  # stops at the stream's end (OB pad)
    except lzma.LZMAError:
        raise RecordCorruptError("original file payload does not decompress") from None
    if offset is None:
        return rest
    if not 0 <= offset <= len(rest):
        raise RecordCorruptError("original file payload: Pixel Data offset out of range")
    return rest[:offset] + pixel_value + rest[offset:]
