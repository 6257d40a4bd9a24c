"""What the record keeps of a native original's Pixel Data, given the protected Pixel Data strip starts from.

Kinds (the record's (0011,xx02); every kind stays decodable, `DEFAULT_KIND` is what protect writes):

RESIDUAL_JLS (default): the original minus the protected words (wrapping word arithmetic, offset to unsigned) as
one JPEG-LS lossless image, frames and samples side by side. The watermark's difference is smooth (an upsampled
cloak, a blended logo), which JPEG-LS's neighbour prediction turns into few bits: on the real CT with `fast`
(63 % of the words changed) 70 KiB per slice in 4 ms, decoded in 3 ms, against 155 KiB, 25 ms and 11 ms for
CHANGED_WORDS (benchmarks/record_payload.py, docs/speed.md). Words over 16 bits, or a buffer that is not a
whole image, go to RESIDUAL_ZSTD; so does any JPEG-LS payload that does not decode back exactly at protect time.

RESIDUAL_ZSTD: the same residual, zigzag-mapped, in byte planes, zstd (see encode_residual).

CHANGED_WORDS: the word count (uint64 LE), a bitmask of the Pixel Data words that differ between original and protected
(zero outside the watermark, so it packs to a few hundred bytes), then the original value of
each changed word with its bytes split into planes (high bytes of neighbouring pixels are alike).
Measured on a 512x512 CT slice with the transfer profile: 13 KB after LZMA, against 24 KB for
the dense residual (original - protected) and 22 KB for the residual of the changed words only:
natural image values compress better than the adversarial texture in a residual.
LZMA preset 0: with the cloak about 60 % of a CT slice's words change, and on those payloads (~150 KiB)
preset 6 took 137 ms per slice against 27 ms for preset 0, for 6 % more bytes (4 real CT slices, `fast`);
it was half of the `fast` profile's end-to-end time. Any preset decodes the same way.
"""

from __future__ import annotations

import lzma

import numpy as np

from .errors import IntegrityError, RecordCorruptError
from .limits import MAX_PIXEL_VALUES

CHANGED_WORDS, RESIDUAL_JLS, RESIDUAL_ZSTD = "CHANGED_WORDS", "RESIDUAL_JLS", "RESIDUAL_ZSTD"
DEFAULT_KIND = RESIDUAL_JLS
# An encapsulated (compressed) original: its bitstream itself. ORIGINAL is LZMA preset 6, ORIGINAL_ZSTD zstd:
# a compressed bitstream barely compresses further, and LZMA spent ~190 ms on a 512 px CT's worth of it.
ORIGINAL, ORIGINAL_ZSTD = "ORIGINAL", "ORIGINAL_ZSTD"
ORIGINAL_KINDS = (ORIGINAL, ORIGINAL_ZSTD)
DEFAULT_ORIGINAL_KIND = ORIGINAL_ZSTD
MAX_ORIGINAL_BYTES = 4 * MAX_PIXEL_VALUES  # an encapsulated original's bitstream: never more than its values
JLS_MAX_SIDE = 65535  # JPEG-LS frame header: 16-bit width and height


def encode_pixels(original: bytes, protected: bytes, dtype: np.dtype, width: int, kind: str | None = None
                  ) -> tuple[str, bytes]:
    """(kind, payload) restoring `original` from `protected`; width: words per image row (columns x samples
    for interleaved samples), which RESIDUAL_JLS lays the words out by. kind None: DEFAULT_KIND."""
    kind = kind or DEFAULT_KIND
    if kind == CHANGED_WORDS:
        return kind, encode_changed_words(original, protected, dtype)
    if kind == RESIDUAL_JLS:
        payload = _encode_residual_jls(original, protected, dtype, width)
        if payload is not None and _apply_residual_jls(protected, payload, dtype) == original:
            return kind, payload
        kind = RESIDUAL_ZSTD  # not an image JPEG-LS takes, or the codec did not give it back exactly
    if kind == RESIDUAL_ZSTD:
        return kind, encode_residual(original, protected, dtype)
    raise ValueError(f"unknown pixel payload kind {kind!r}")


def encode_original(original: bytes, kind: str | None = None) -> tuple[str, bytes]:
    """(kind, payload) holding an encapsulated original's Pixel Data bytes. kind None: DEFAULT_ORIGINAL_KIND."""
    kind = kind or DEFAULT_ORIGINAL_KIND
    if kind == ORIGINAL:
        return kind, lzma.compress(original, preset=6)
    if kind == ORIGINAL_ZSTD:
        import zstandard

        return kind, zstandard.ZstdCompressor(level=RESIDUAL_LEVEL, write_content_size=True).compress(original)
    raise ValueError(f"unknown original payload kind {kind!r}")


def apply_original(kind: str, payload: bytes) -> bytes:
    if kind == ORIGINAL:
        try:
            return lzma.LZMADecompressor().decompress(payload)  # stops at the stream's end (OB pad byte)
        except lzma.LZMAError:
            raise RecordCorruptError("pixel payload does not decompress") from None
    if kind == ORIGINAL_ZSTD:
        return _unzstd(payload, None)
    raise RecordCorruptError(f"unknown pixel payload kind {kind!r}")


def _unzstd(payload: bytes, size: int | None) -> bytes:
    """One zstd frame's content; size: what it must hold (None: any size up to MAX_ORIGINAL_BYTES)."""
    import zstandard

    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise RecordCorruptError("pixel payload is not a zstd frame") from None
    if size is not None and declared != size:  # checked before decompressing: a forged size allocates nothing
        raise IntegrityError("Pixel Data length differs from the protected object's")
    if not 0 <= declared <= MAX_ORIGINAL_BYTES:
        raise RecordCorruptError("pixel payload declares no or an oversized content size")
    try:
        data = zstandard.ZstdDecompressor().decompressobj().decompress(payload)  # stops at the frame's end
    except zstandard.ZstdError:
        raise RecordCorruptError("pixel payload does not decompress") from None
    if len(data) != declared:
        raise RecordCorruptError("pixel payload is truncated")
    return data


def apply_payload(kind: str, protected: bytes, payload: bytes, dtype: np.dtype) -> bytes:
    """The original Pixel Data from the protected one and a payload of `kind`."""
    if kind == CHANGED_WORDS:
        return apply_changed_words(protected, payload, dtype)
    if kind == RESIDUAL_JLS:
        return _apply_residual_jls(protected, payload, dtype)
    if kind == RESIDUAL_ZSTD:
        return apply_residual(protected, payload, dtype)
    raise RecordCorruptError(f"unknown pixel payload kind {kind!r}")


def word_dtype(bits_allocated: int, length: int) -> np.dtype:
    dtype = np.dtype(f"<u{max(bits_allocated // 8, 1)}")
    return dtype if length % dtype.itemsize == 0 else np.dtype("<u1")


def encode_changed_words(original: bytes, protected: bytes, dtype: np.dtype) -> bytes:
    if len(original) != len(protected):
        raise ValueError("changed-words payload needs equal Pixel Data lengths")
    before = np.frombuffer(original, dtype)
    changed = before != np.frombuffer(protected, dtype)
    planes = before[changed].view(np.uint8).reshape(-1, dtype.itemsize).T
    header = np.uint64(len(before)).tobytes()
    return lzma.compress(header + np.packbits(changed).tobytes() + planes.tobytes(), preset=0)


def apply_changed_words(protected: bytes, payload: bytes, dtype: np.dtype) -> bytes:
    try:
        data = lzma.LZMADecompressor().decompress(payload)  # stops at the stream's end (OB pad byte)
    except lzma.LZMAError:
        raise RecordCorruptError("pixel payload does not decompress") from None
    if len(protected) % dtype.itemsize:
        raise IntegrityError("Pixel Data length does not fit the record's word type")
    words = np.frombuffer(protected, dtype).copy()
    if len(data) < 8 or int(np.frombuffer(data[:8], "<u8")[0]) != len(words):
        raise IntegrityError("Pixel Data length differs from the protected object's")
    mask_bytes = (len(words) + 7) // 8
    changed = np.unpackbits(np.frombuffer(data[8:8 + mask_bytes], np.uint8), count=len(words)).astype(bool)
    values = np.frombuffer(data[8 + mask_bytes:], np.uint8)
    if values.size != int(changed.sum()) * dtype.itemsize:
        raise IntegrityError("Pixel Data does not fit the record (length or changed words differ)")
    words[changed] = values.reshape(dtype.itemsize, -1).T.copy().view(dtype).ravel()
    return words.tobytes()


# ---- RESIDUAL_ZSTD ---------------------------------------------------------------------------------
# The original minus the protected words (wrapping word arithmetic), zigzag-mapped so that small differences of
# either sign have zero high bytes, split into byte planes, zstd. Zero wherever the watermark left a word alone,
# so its cost follows the watermark's amplitude, not how many words it touched: a cloak over the whole slice costs
# little more than a logo. zstd at a low level: most of the work is the planes' long runs.

RESIDUAL_LEVEL = 1


def _zigzag(d: np.ndarray) -> np.ndarray:
    s = d.view(d.dtype.str.replace("u", "i"))
    return ((s << 1) ^ (s >> (8 * d.dtype.itemsize - 1))).view(d.dtype)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ (np.zeros_like(z) - (z & 1))


def encode_residual(original: bytes, protected: bytes, dtype: np.dtype, level: int = RESIDUAL_LEVEL) -> bytes:
    import zstandard  # imported when used: strip of an older record needs none of the codecs

    if len(original) != len(protected):
        raise ValueError("residual payload needs equal Pixel Data lengths")
    d = np.frombuffer(original, dtype) - np.frombuffer(protected, dtype)  # wraps: words are modular
    planes = _zigzag(d).view(np.uint8).reshape(-1, dtype.itemsize).T
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(planes.tobytes())


def apply_residual(protected: bytes, payload: bytes, dtype: np.dtype) -> bytes:
    if len(protected) % dtype.itemsize:
        raise IntegrityError("Pixel Data length does not fit the record's word type")
    data = _unzstd(payload, len(protected))
    z = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, -1).T.copy().view(dtype).ravel()
    return (np.frombuffer(protected, dtype) + _unzigzag(z)).tobytes()


# ---- RESIDUAL_JLS ----------------------------------------------------------------------------------

def _half(dtype: np.dtype):
    return dtype.type(1 << (8 * dtype.itemsize - 1))


def _encode_residual_jls(original: bytes, protected: bytes, dtype: np.dtype, width: int) -> bytes | None:
    """The payload, or None where JPEG-LS cannot hold the words (over 16 bits, not rows of `width`)."""
    import jpeg_ls

    if len(original) != len(protected):
        raise ValueError("residual payload needs equal Pixel Data lengths")
    count = len(original) // dtype.itemsize
    if dtype.itemsize > 2 or width <= 0 or count % width or not 0 < width <= JLS_MAX_SIDE \
            or not 0 < count // width <= JLS_MAX_SIDE:
        return None
    d = np.frombuffer(original, dtype) - np.frombuffer(protected, dtype) + _half(dtype)  # wraps: modular words
    try:
        return bytes(jpeg_ls.encode_array(d.reshape(count // width, width)))
    except Exception:  # noqa: BLE001 - whatever CharLS refuses goes to RESIDUAL_ZSTD
        return None


def _apply_residual_jls(protected: bytes, payload: bytes, dtype: np.dtype) -> bytes:
    import jpeg_ls

    if len(protected) % dtype.itemsize:
        raise IntegrityError("Pixel Data length does not fit the record's word type")
    try:
        data, info = jpeg_ls.decode_buffer(payload)
    except Exception:  # noqa: BLE001 - CharLS raises RuntimeError/ValueError on a bad stream
        raise RecordCorruptError("pixel payload does not decode (JPEG-LS)") from None
    sample = np.dtype("<u1" if int(info.get("bits_per_sample", 16)) <= 8 else "<u2")  # CharLS fits the values
    if len(data) != len(protected) // dtype.itemsize * sample.itemsize or info.get("components", 1) != 1 \
            or sample.itemsize > dtype.itemsize:
        raise IntegrityError("Pixel Data length differs from the protected object's")
    d = np.frombuffer(data, sample).astype(dtype)
    return (np.frombuffer(protected, dtype) + d - _half(dtype)).tobytes()
