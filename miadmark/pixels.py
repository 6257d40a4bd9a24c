"""Stored pixel values <-> the [0, 1] model domain a third-party AI model sees, and back, exactly.

decode() reads the stored values; to_model() applies the modality LUT (rescale), the VOI window
(or min/max) and MONOCHROME1 inversion, or a palette / RGB scaling; from_model() maps changed
pixels back to stored values (inverse window, inverse rescale, round, clip to the stored range)
and leaves every unchanged pixel at its original stored value, bit for bit.

Native little-endian pixel data is read straight from the raw words so that bits above
BitsStored (overlays, padding) survive; everything else goes through pydicom's decoders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, pack_bits, unpack_bits
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .errors import InvalidInputError, UnsupportedImageError, safe_reason
from .limits import check_pixel_header

# pydicom logs every failing decoder's traceback before it raises; decoded_array's refusal names the reason once
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)

NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                         "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}


@dataclass
class Pixels:
    """Stored values of every frame, shape (frames, rows, cols, samples)."""

    stored: np.ndarray
    photometric: str  # of `stored` (RGB when pydicom converted from YBR)
    bits_allocated: int
    bits_stored: int
    signed: bool
    native: bool  # True: `stored` maps 1:1 onto the raw little-endian words of Pixel Data
    planar: int = 0

    @property
    def value_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


def decode(ds: Dataset) -> Pixels:
    """Stored values of every frame, or a refusal; the header is checked before any decoding (limits)."""
    if "PixelData" not in ds:
        kind = "FloatPixelData" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "Pixel Data"
        raise UnsupportedImageError(f"no {kind} to watermark" if kind == "Pixel Data"
                                    else "float pixel data is not supported")
    head = check_pixel_header(ds)
    rows, cols, spp, frames = head.rows, head.cols, head.samples, head.frames
    bits_allocated, bits_stored, signed = head.bits_allocated, head.bits_stored, head.signed
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedImageError("PhotometricInterpretation is not one of the supported values")
    raw_native = (head.transfer_syntax in NATIVE_LITTLE_ENDIAN and bits_allocated in (8, 16, 32)
                  and photometric in {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"})
    if raw_native:
        words = _raw_words(ds, frames, rows, cols, spp, bits_allocated)
        stored = _stored_from_words(words, bits_stored, signed)
        if head.planar == 1:
            stored = stored.transpose(0, 2, 3, 1)  # (F, S, H, W) -> (F, H, W, S)
        return Pixels(np.ascontiguousarray(stored), photometric, bits_allocated, bits_stored, signed, True,
                      head.planar)
    arr = np.asarray(decoded_array(ds, head.transfer_syntax))
    if arr.size != head.values:
        raise UnsupportedImageError(f"decoded pixel data has {arr.size} values, the header declares {head.values}")
    arr = arr.reshape(frames, rows, cols, spp)
    if photometric.startswith("YBR") and spp == 3:
        photometric = "RGB"  # pydicom converts YBR to RGB on decode (as_rgb=True)
    if arr.dtype.kind == "f":
        raise UnsupportedImageError("float pixel data is not supported")
    signed = arr.dtype.kind == "i" or signed
    return Pixels(arr, photometric, bits_allocated, bits_stored, signed, False)


# gdcm aborts the whole process (SIGABRT) on some inconsistent headers, e.g. JPEG with BitsAllocated 32:
# it is never used on untrusted data. Every other plugin raises, or panics in Rust (a BaseException).
UNSAFE_DECODERS = {"gdcm"}


def decoded_array(ds: Dataset, transfer_syntax) -> np.ndarray:
    """Decode with the first safe pydicom plugin that succeeds; every failure is a refusal with its reason."""
    from pydicom.pixels import pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise UnsupportedImageError("no decoder for this transfer syntax") from None
    plugins = [p for p in decoder.available_plugins if p not in UNSAFE_DECODERS]
    plugins.sort(key=lambda p: p != "pylibjpeg")  # fastest first; the others are the fallbacks
    if decoder.is_encapsulated and not plugins:
        raise UnsupportedImageError("no decoder that cannot abort the process is installed for this transfer syntax")
    first_error = None
    for plugin in plugins or [""]:
        try:
            return pixel_array(ds, decoding_plugin=plugin)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException; all are refusals
            first_error = first_error or exc
    raise UnsupportedImageError(f"pixel data does not decode ({_decoder_reason(first_error)})") from None


def _decoder_reason(exc: BaseException) -> str:
    """pydicom's "exceptions were raised by all available plugins:" opens a list, one plugin a line: the first
    plugin's line is the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return safe_reason(RuntimeError(lines[1]))
    return safe_reason(exc)


def _raw_words(ds: Dataset, frames: int, rows: int, cols: int, spp: int, bits_allocated: int) -> np.ndarray:
    n = frames * rows * cols * spp
    data = ds.PixelData
    dtype = np.dtype(f"<u{bits_allocated // 8}")
    if len(data) < n * dtype.itemsize:
        raise InvalidInputError(f"truncated Pixel Data: {len(data)} bytes for {n} samples of {bits_allocated} bits")
    words = np.frombuffer(data, dtype=dtype, count=n)
    planar = int(ds.get("PlanarConfiguration", 0)) if spp > 1 else 0
    return words.reshape((frames, spp, rows, cols) if planar == 1 else (frames, rows, cols, spp))


def _stored_from_words(words: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    mask = (1 << bits_stored) - 1
    values = words.astype(np.int64) & mask
    if signed:
        values = np.where(values >= (1 << (bits_stored - 1)), values - (1 << bits_stored), values)
    return values


def native_pixel_bytes(ds: Dataset, px: Pixels, new_stored: np.ndarray) -> bytes:
    """Pixel Data bytes for the protected object in ds's own native layout.

    For native originals only the changed words are rewritten (bits above BitsStored kept), so the
    bytes differ from the original exactly where the watermark is. Otherwise a fresh native
    little-endian buffer (interleaved samples) is built from the decoded values.
    """
    if px.native:
        rows, cols, spp = new_stored.shape[1:]
        words = _raw_words(ds, new_stored.shape[0], rows, cols, spp, px.bits_allocated).copy()
        changed_stored = new_stored if px.planar == 0 else new_stored.transpose(0, 3, 1, 2)
        old = _stored_from_words(words, px.bits_stored, px.signed)
        changed = changed_stored != old
        mask = (1 << px.bits_stored) - 1
        full = (1 << px.bits_allocated) - 1
        new_vals = changed_stored[changed].astype(np.int64)
        if px.signed:
            encoded = new_vals & full  # two's complement, sign-extended over the whole word
        else:
            encoded = (words[changed].astype(np.int64) & (full ^ mask)) | (new_vals & mask)
        words[changed] = encoded.astype(words.dtype)
        out = bytearray(ds.PixelData)
        flat = words.tobytes()
        out[: len(flat)] = flat
        return bytes(out)
    if px.bits_allocated == 1:
        data = pack_bits(new_stored.astype(np.uint8).ravel())
    else:
        kind = "i" if px.signed else "u"
        data = new_stored.astype(f"<{kind}{px.bits_allocated // 8}").tobytes()
    return data + b"\0" if len(data) % 2 else data


@dataclass
class Mapping:
    """How each frame was scaled into [0, 1]; enough to invert it."""

    kind: str  # "mono", "rgb", "palette"
    lo: np.ndarray | None = None  # per frame, in modality units
    hi: np.ndarray | None = None
    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False
    scale: float = 1.0  # rgb: full-scale stored value
    table: np.ndarray | None = None  # palette: (entries, 3) in [0, 1]
    table_first: int = 0


def to_model(ds: Dataset, px: Pixels) -> tuple[np.ndarray, Mapping]:
    """float32 (F, C, H, W) in [0, 1] and the mapping that inverts it."""
    stored = px.stored
    if px.photometric == "PALETTE COLOR":
        try:
            return _palette_to_model(ds, px, stored)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any inconsistency of the LUT elements refuses this image
            raise UnsupportedImageError(f"palette colour lookup table is unusable ({type(exc).__name__})") from None
    return _linear_to_model(ds, px, stored)


def _palette_to_model(ds: Dataset, px: Pixels, stored: np.ndarray) -> tuple[np.ndarray, Mapping]:
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    n_entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
    indices = np.arange(first, first + n_entries)
    rgb = apply_color_lut(indices.astype(np.uint16 if px.bits_allocated > 8 else np.uint8)
                          if indices.max() < (1 << px.bits_allocated) else indices, ds)
    table = rgb.astype(np.float32) / (255.0 if rgb.dtype == np.uint8 else 65535.0)
    idx = np.clip(stored[..., 0] - first, 0, n_entries - 1)
    x = table[idx]  # (F, H, W, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), Mapping("palette", table=table, table_first=first)


def _linear_to_model(ds: Dataset, px: Pixels, stored: np.ndarray) -> tuple[np.ndarray, Mapping]:
    if px.photometric == "RGB" or stored.shape[-1] == 3:
        scale = float((1 << px.bits_stored) - 1)
        x = stored.astype(np.float32) / scale
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), Mapping("rgb", scale=scale)
    if px.bits_allocated == 1:
        x = stored.astype(np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), Mapping("mono", lo=np.zeros(len(x)),
                                                                     hi=np.ones(len(x)))
    slope, intercept = _rescale(ds)
    values = stored[..., 0].astype(np.float64) * slope + intercept
    lo, hi = _window(ds, values)
    span = np.maximum(hi - lo, 1e-6)
    x = np.clip((values - lo[:, None, None]) / span[:, None, None], 0.0, 1.0)
    invert = px.photometric == "MONOCHROME1"
    if invert:
        x = 1.0 - x
    mapping = Mapping("mono", lo=lo, hi=hi, slope=slope, intercept=intercept, invert=invert)
    return x[:, None].astype(np.float32), mapping


def from_model(px: Pixels, mapping: Mapping, x_old: np.ndarray, x_new: np.ndarray,
               lesion: np.ndarray | None) -> np.ndarray:
    """Stored values after watermarking: changed pixels mapped back, all others exactly as before."""
    changed = np.any(x_new != x_old, axis=1)  # (F, H, W)
    if lesion is not None:
        changed &= ~lesion
    new = px.stored.copy()
    if not changed.any():
        return new
    lo_v, hi_v = px.value_range
    if mapping.kind in ("mono", "rgb") and px.bits_allocated != 1:
        # every pixel mapped back, the unchanged ones then kept: dense arithmetic, the same values element by element
        # as the gather below, at a fraction of its cost when a cloak changes most pixels
        if mapping.kind == "mono":
            v = x_new[:, 0].astype(np.float64)
            if mapping.invert:
                v = 1.0 - v
            lo, hi = np.asarray(mapping.lo)[:, None, None], np.asarray(mapping.hi)[:, None, None]
            stored = np.rint((lo + v * (hi - lo) - mapping.intercept) / mapping.slope)[..., None]
        else:
            stored = np.rint(np.moveaxis(x_new, 1, -1).astype(np.float64) * mapping.scale)
        mapped = np.clip(stored, lo_v, hi_v).astype(new.dtype)
        return np.where(changed[..., None], mapped, new)
    f, h, w = np.nonzero(changed)
    vals = x_new[f, :, h, w]  # (n, C)
    if mapping.kind == "mono":
        v = vals[:, 0].astype(np.float64)
        if mapping.invert:
            v = 1.0 - v
        if px.bits_allocated == 1:
            stored = np.rint(v)
        else:
            modality = mapping.lo[f] + v * (mapping.hi[f] - mapping.lo[f])
            stored = np.rint((modality - mapping.intercept) / mapping.slope)
        new[f, h, w, 0] = np.clip(stored, lo_v, hi_v).astype(new.dtype)
    elif mapping.kind == "rgb":
        stored = np.rint(vals.astype(np.float64) * mapping.scale)
        new[f, h, w, :] = np.clip(stored, lo_v, hi_v).astype(new.dtype)
    else:  # palette: nearest colour in the table, in chunks to bound memory
        table = mapping.table
        best = np.empty(len(vals), dtype=np.int64)
        for start in range(0, len(vals), 4096):
            chunk = vals[start:start + 4096]
            d = ((chunk[:, None, :] - table[None, :, :]) ** 2).sum(-1)
            best[start:start + 4096] = d.argmin(1)
        new[f, h, w, 0] = np.clip(best + mapping.table_first, lo_v, hi_v).astype(new.dtype)
    return new


def _rescale(ds: Dataset) -> tuple[float, float]:
    if "ModalityLUTSequence" in ds:
        return 1.0, 0.0  # a non-linear LUT: work on stored values (min/max window below)
    source = ds
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        item = ds.get(seq, [None])[0] if ds.get(seq) else None
        if item is not None and "PixelValueTransformationSequence" in item:
            source = item.PixelValueTransformationSequence[0]
            break
    slope = _finite(source, "RescaleSlope", 1.0)
    intercept = _finite(source, "RescaleIntercept", 0.0)
    if slope == 0:
        raise UnsupportedImageError("RescaleSlope is zero")
    return slope, intercept


def _finite(source: Dataset, keyword: str, default: float) -> float:
    """A finite number from a DS element (first value of several), or a refusal naming the element."""
    value = source.get(keyword, default)
    try:
        number = _first(value) if value not in (None, "") else default
    except (TypeError, ValueError, IndexError):
        raise InvalidInputError(f"{keyword} is not a number") from None
    if not np.isfinite(number) or abs(number) > 1e12:
        raise UnsupportedImageError(f"{keyword} is not a finite number of sane magnitude")
    return number


def _window(ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (lo, hi) of the first linear VOI window, else each frame's min/max."""
    n = values.shape[0]
    source = None
    if "VOILUTSequence" not in ds:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            source = ds
        else:
            for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
                item = ds.get(seq, [None])[0] if ds.get(seq) else None
                if item is not None and "FrameVOILUTSequence" in item:
                    source = item.FrameVOILUTSequence[0]
                    break
    if source is not None and "WindowCenter" in source and "WindowWidth" in source:
        center, width = _finite(source, "WindowCenter", 0.0), _finite(source, "WindowWidth", 0.0)
        if width >= 1:
            lo = center - 0.5 - (width - 1) / 2
            hi = center - 0.5 + (width - 1) / 2
            return np.full(n, lo), np.full(n, max(hi, lo + 1))
    flat = values.reshape(n, -1)
    lo, hi = flat.min(1), flat.max(1)
    return lo, np.where(hi > lo, hi, lo + 1)


def _first(value) -> float:
    if isinstance(value, (str, bytes)):
        return float(value)
    try:
        return float(value[0])
    except TypeError:
        return float(value)


__all__ = ["Pixels", "Mapping", "decode", "to_model", "from_model", "native_pixel_bytes", "unpack_bits"]
