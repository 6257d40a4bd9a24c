"""What the record keeps of a native original's Pixel Data, given the protected Pixel Data strip starts from.

Kinds (the record's (0011,xx02); every kind stays decodable, `DEFAULT_KIND` is what protect writes):

RESIDUAL_ZSTD (default): the original minus the protected words (wrapping word arithmetic), each minus the one
`stride` words before (the previous sample of the same channel), zigzag-mapped so that small values of either
sign have zero high bytes, in byte planes, zstd level 1. Zero wherever the watermark left a word alone, and the
watermark's difference is smooth (an upsampled cloak, a blended logo), so its cost follows the watermark's
detail, not how many words it touched: on the real CT with `fast` (63 % of the words changed) about half of
CHANGED_WORDS's bytes in a tenth of its time (benchmarks/record_payload.py, docs/speed.md).
Where the original itself compresses smaller (flat synthetic images: a noisy cloak over bars of colour), protect
keeps ORIGINAL_ZSTD instead: a payload is never larger than the zstd of the original.
JPEG-LS of the same residual is ~13 % smaller, but pyjpegls's CharLS exports the same C symbols (JpegLsEncode)
as the CharLS inside Orthanc's DCMTK: called in the plugin, the hospital Orthanc crashed. numpy and zstd only.

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

CHANGED_WORDS, RESIDUAL_ZSTD = "CHANGED_WORDS", "RESIDUAL_ZSTD"
DEFAULT_KIND = RESIDUAL_ZSTD
# An encapsulated (compressed) original: its bitstream itself. ORIGINAL is LZMA preset 6, ORIGINAL_ZSTD zstd:
# a compressed bitstream barely compresses further, and LZMA spent ~190 ms on a 512 px CT's worth of it.
ORIGINAL, ORIGINAL_ZSTD = "ORIGINAL", "ORIGINAL_ZSTD"
ORIGINAL_KINDS = (ORIGINAL, ORIGINAL_ZSTD)
DEFAULT_ORIGINAL_KIND = ORIGINAL_ZSTD
WHOLE_TRIED_BELOW = 256 * 1024
MAX_ORIGINAL_BYTES = 4 * MAX_PIXEL_VALUES  # an encapsulated original's bitstream: never more than its values


def encode_pixels(original: bytes, protected: bytes, dtype: np.dtype, stride: int = 1, kind: str | None = None
                  ) -> tuple[str, bytes]:
    """(kind, payload) restoring `original` from `protected`; stride: words between two samples of one channel
    (samples per pixel for interleaved colour, else 1). kind None: DEFAULT_KIND, or ORIGINAL_ZSTD (the original
    words themselves) where that is smaller: tried for images up to WHOLE_TRIED_BELOW bytes and wherever the
    residual compressed poorly (to over a quarter of the words)."""
    if kind is None:
        kind, payload = encode_pixels(original, protected, dtype, stride, DEFAULT_KIND)
        if len(original) > WHOLE_TRIED_BELOW and len(payload) < len(original) // 4:
            return kind, payload  # a real image under a watermark: its original never compresses smaller
        whole = encode_original(original, ORIGINAL_ZSTD)
        return whole if len(whole[1]) < len(payload) else (kind, payload)
    if kind == CHANGED_WORDS:
        return kind, encode_changed_words(original, protected, dtype)
    if kind == RESIDUAL_ZSTD:
        return kind, encode_residual(original, protected, dtype, stride)
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
    """The original Pixel Data from the protected one and a payload of `kind` (ORIGINAL kinds: apply_original)."""
    if kind == CHANGED_WORDS:
        return apply_changed_words(protected, payload, dtype)
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
# zstd content: the stride (one byte), then the words' byte planes.

RESIDUAL_LEVEL = 1  # the planes' long zero runs are most of the gain; higher levels cost 3x for 7 % (CT, fast)
MAX_STRIDE = 4  # samples per pixel of any image protect accepts


def _zigzag(d: np.ndarray) -> np.ndarray:
    s = d.view(d.dtype.str.replace("u", "i"))
    return ((s << 1) ^ (s >> (8 * d.dtype.itemsize - 1))).view(d.dtype)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ (np.zeros_like(z) - (z & 1))


def encode_residual(original: bytes, protected: bytes, dtype: np.dtype, stride: int = 1,
                    level: int = RESIDUAL_LEVEL) -> bytes:
    import zstandard  # imported when used: strip of an older record needs none of the codecs

    if len(original) != len(protected):
        raise ValueError("residual payload needs equal Pixel Data lengths")
    if not 1 <= stride <= MAX_STRIDE:
        raise ValueError(f"stride {stride} outside 1..{MAX_STRIDE}")
    d = np.frombuffer(original, dtype) - np.frombuffer(protected, dtype)  # wraps: words are modular
    e = d.copy()
    e[stride:] -= d[:-stride]  # the previous sample of the same channel predicts this one
    planes = _zigzag(e).view(np.uint8).reshape(-1, dtype.itemsize).T
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(bytes([stride]) + planes.tobytes())


def apply_residual(protected: bytes, payload: bytes, dtype: np.dtype) -> bytes:
    if len(protected) % dtype.itemsize:
        raise IntegrityError("Pixel Data length does not fit the record's word type")
    data = _unzstd(payload, len(protected) + 1)
    stride = data[0]
    if not 1 <= stride <= MAX_STRIDE:
        raise RecordCorruptError("residual payload has no valid stride")
    e = _unzigzag(np.frombuffer(data, np.uint8, offset=1).reshape(dtype.itemsize, -1).T.copy().view(dtype).ravel())
    if stride == 1:
        d = np.cumsum(e, dtype=dtype)  # undoes the prediction, wrapping like the words
    else:
        n = len(e)
        columns = np.concatenate([e, np.zeros(-n % stride, dtype)]).reshape(-1, stride)
        d = np.cumsum(columns, axis=0, dtype=dtype).ravel()[:n]
    return (np.frombuffer(protected, dtype) + d).tobytes()
