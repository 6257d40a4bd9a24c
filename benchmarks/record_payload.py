"""Record pixel payload candidates: bytes per slice and ms per slice (encode, decode) on real watermarks.

Inputs: the real CT series (../shared/data/dicom/ct_chest_lidc0314), the chest CR of pydicom-data (RG1_UNCR.dcm)
and the native RGB files of ../shared/data/dicom/transfer_syntaxes (MANIFEST.tsv), watermarked as protect does
(decode -> engine -> stored values -> native Pixel Data bytes). Candidates, each checked to round-trip exactly:

  changed-lzma0   the changed words' original values, mask and byte planes, LZMA preset 0 (CHANGED_WORDS)
  residual-zstdN  original minus protected, wrapping word arithmetic, each minus the previous sample, zigzag,
                  byte planes, zstd level N (RESIDUAL_ZSTD at N=1)
  residual-flat   the same without the prediction (zstd level 1)
  residual-jls    the residual, offset to unsigned, as a JPEG-LS lossless image (16 bits or less; pyjpegls,
                  which protect cannot use: its CharLS clashes with Orthanc's, see miadmark.pixel_payload)
  original-zstd1  the original Pixel Data, byte planes, zstd level 1
  original-jls    the original Pixel Data as a JPEG-LS lossless image (16 bits or less)
  original-lzma6  the original Pixel Data, LZMA preset 6 (ORIGINAL: what encapsulated originals got)
  protect-default what protect writes: RESIDUAL_JLS (or _ZSTD), or ORIGINAL_ZSTD where smaller

    .venv/bin/python benchmarks/record_payload.py [--profile fast] [--ct 16] [--json out.json] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.core import SERIES  # noqa: E402
from miadmark import pixel_payload as P  # noqa: E402
from miadmark.dicomio import read_dicom  # noqa: E402
from miadmark.engine import get_engine  # noqa: E402
from miadmark.machine import describe  # noqa: E402
from miadmark.pixels import decode, from_model, native_pixel_bytes, to_model  # noqa: E402
from miadmark.protect import _run_engine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"


def rgb_files() -> list[Path]:
    """Native RGB files of the transfer-syntax set (a watermark on colour words)."""
    out = []
    for line in (SHARED / "transfer_syntaxes" / "MANIFEST.tsv").read_text().splitlines():
        cols = line.split("\t")
        if len(cols) > 8 and cols[8] == "RGB" and "Little Endian" in cols[3] and cols[9].startswith("ok"):
            out.append(SHARED / "transfer_syntaxes" / cols[0])
    return out


def chest_cr() -> list[Path]:
    try:
        from pydicom.data import get_testdata_file
        return [Path(get_testdata_file("RG1_UNCR.dcm"))]
    except Exception:  # noqa: BLE001 - pydicom-data is a test extra
        return []


def watermarked(paths: list[Path], engine, batch: int = 16) -> list[tuple[str, bytes, bytes, np.dtype, tuple]]:
    """(name, original Pixel Data, protected Pixel Data, word dtype, (frames, rows, cols, spp)) per file."""
    preps = []
    for p in paths:
        ds = read_dicom(p)
        px = decode(ds)
        if not px.native:
            continue
        x, mapping = to_model(ds, px)
        preps.append((p, ds, px, x, mapping))
    out = []
    for i in range(0, len(preps), batch):
        chunk = preps[i:i + batch]
        by_shape: dict = {}
        for item in chunk:
            by_shape.setdefault(item[3].shape[1:], []).append(item)
        for items in by_shape.values():
            x = np.concatenate([it[3] for it in items])
            lesion = np.zeros((x.shape[0], *x.shape[2:]), bool)
            from miadmark.engine import ImageContext
            ctx = [ImageContext(modality=str(it[1].get("Modality", "")), photometric=it[2].photometric,
                                sop_instance_uid=str(it[1].SOPInstanceUID)) for it in items
                   for _ in range(it[3].shape[0])]
            x_new, _ = _run_engine(engine, x, lesion, ctx)
            k = 0
            for p, ds, px, x1, mapping in items:
                n = x1.shape[0]
                new = from_model(px, mapping, x1, x_new[k:k + n], lesion[k:k + n])
                k += n
                data = bytes(ds.PixelData)
                prot = native_pixel_bytes(ds, px, new)
                out.append((p.name, data, prot, P.word_dtype(px.bits_allocated, len(data)), px.stored.shape))
    return out


def _planes(words: np.ndarray) -> bytes:
    return words.view(np.uint8).reshape(-1, words.dtype.itemsize).T.tobytes()


def _unplanes(data: bytes, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(dtype.itemsize, -1).T.copy().view(dtype).ravel()


def _stride(dt: np.dtype, shape: tuple) -> int:
    return shape[3]  # interleaved samples (the native RGB files here are PlanarConfiguration 0)


def _image(words: np.ndarray, shape: tuple) -> np.ndarray:
    frames, rows, cols, spp = shape
    n = words.size
    return words.reshape(n // (cols * spp), cols * spp)  # frames and samples side by side: a lossless container


def candidates():
    import jpeg_ls
    import zstandard

    def changed(o, p, dt, shape):
        payload = P.encode_changed_words(o, p, dt)
        return payload, lambda: P.apply_changed_words(p, payload, dt)

    def residual(level):
        def enc(o, p, dt, shape):
            payload = P.encode_residual(o, p, dt, _stride(dt, shape), level=level)
            return payload, lambda: P.apply_residual(p, payload, dt)
        return enc

    def residual_flat(o, p, dt, shape):
        d = np.frombuffer(o, dt) - np.frombuffer(p, dt)
        payload = zstandard.ZstdCompressor(level=1).compress(_planes(P._zigzag(d)))
        return payload, lambda: (np.frombuffer(p, dt) + P._unzigzag(
            _unplanes(zstandard.ZstdDecompressor().decompress(payload), dt))).tobytes()

    def residual_jls(o, p, dt, shape):
        if dt.itemsize > 2:
            return None
        a, b = np.frombuffer(o, dt), np.frombuffer(p, dt)
        half = dt.type(1 << (8 * dt.itemsize - 1))
        r = (a - b + half).astype(dt)  # wraps: modular words
        payload = bytes(jpeg_ls.encode_array(_image(r, shape)))

        def dec():
            r2 = np.frombuffer(jpeg_ls.decode_buffer(payload)[0], dt)
            return (np.frombuffer(p, dt) + r2 - half).astype(dt).tobytes()
        return payload, dec

    def original_zstd(o, p, dt, shape):
        payload = zstandard.ZstdCompressor(level=1).compress(_planes(np.frombuffer(o, dt)))
        return payload, lambda: _unplanes(zstandard.ZstdDecompressor().decompress(payload), dt).tobytes()

    def original_jls(o, p, dt, shape):
        if dt.itemsize > 2:
            return None
        payload = bytes(jpeg_ls.encode_array(_image(np.frombuffer(o, dt), shape)))
        return payload, lambda: bytes(jpeg_ls.decode_buffer(payload)[0])

    def original_lzma6(o, p, dt, shape):  # what encapsulated originals get (ORIGINAL), for scale
        payload = lzma.compress(o, preset=6)
        return payload, lambda: lzma.decompress(payload)

    def default(o, p, dt, shape):  # what protect writes: the default kind or the original, the smaller
        kind, payload = P.encode_pixels(o, p, dt, _stride(dt, shape))
        if kind in P.ORIGINAL_KINDS:
            return payload, lambda: P.apply_original(kind, payload)
        return payload, lambda: P.apply_payload(kind, p, payload, dt)

    return {"protect-default": default, "changed-lzma0": changed, "residual-zstd1": residual(1),
            "residual-zstd3": residual(3), "residual-flat": residual_flat, "residual-jls": residual_jls,
            "original-zstd1": original_zstd, "original-jls": original_jls,
            "original-lzma6": original_lzma6}


def measure(pairs, repeat: int = 1) -> dict:
    out = {}
    for name, fn in candidates().items():
        size = enc = dec = 0.0
        n = 0
        for _, o, p, dt, shape in pairs:
            t0 = time.perf_counter()
            for _ in range(repeat):
                res = fn(o, p, dt, shape)
            t1 = time.perf_counter()
            if res is None:  # the codec does not take these words (JPEG-LS: over 16 bits)
                continue
            payload, decoder = res
            for _ in range(repeat):
                back = decoder()
            t2 = time.perf_counter()
            if back[:len(o)] != o:
                raise AssertionError(f"{name} does not round-trip")
            frames = shape[0]
            size += len(payload) / frames
            enc += (t1 - t0) / repeat / frames
            dec += (t2 - t1) / repeat / frames
            n += 1
        if n:
            out[name] = {"files": n, "bytes_per_slice": round(size / n), "encode_ms": round(enc / n * 1000, 2),
                         "decode_ms": round(dec / n * 1000, 2)}
    return out


def changed_fraction(pairs) -> float:
    total = changed = 0
    for _, o, p, dt, _ in pairs:
        a, b = np.frombuffer(o, dt), np.frombuffer(p, dt)
        total += a.size
        changed += int((a != b).sum())
    return changed / max(total, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--ct", type=int, default=16, help="CT slices")
    ap.add_argument("--cloak-ct", type=int, default=2, help="CT slices watermarked with `cloak` too (0: none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--tiny", action="store_true", help="2 CT slices, 1 RGB file, no CR, no cloak (tests)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.ct, args.cloak_ct = 2, 0
    sets = {"ct": sorted(SERIES.glob("*.dcm"))[: args.ct],
            "cr": [] if args.tiny else chest_cr(),
            "rgb": rgb_files()[:1] if args.tiny else rgb_files()}
    result = {"machine": describe(), "profile": args.profile, "sets": {}}
    engine = get_engine(args.profile, args.device)
    for key, paths in sets.items():
        if not paths:
            continue
        pairs = watermarked(paths, engine)
        result["sets"][f"{key}/{args.profile}"] = {"files": len(pairs), "changed": round(changed_fraction(pairs), 3),
                                                   "candidates": measure(pairs)}
    if args.cloak_ct:
        pairs = watermarked(sorted(SERIES.glob("*.dcm"))[: args.cloak_ct], get_engine("cloak", args.device))
        result["sets"]["ct/cloak"] = {"files": len(pairs), "changed": round(changed_fraction(pairs), 3),
                                      "candidates": measure(pairs)}
    for key, res in result["sets"].items():
        print(f"{key}: {res['files']} files, {res['changed'] * 100:.0f} % of words changed")
        for name, c in res["candidates"].items():
            print(f"  {name:15s} {c['bytes_per_slice'] / 1024:8.1f} KiB/slice  encode {c['encode_ms']:7.2f} ms  "
                  f"decode {c['decode_ms']:7.2f} ms" + ("" if c["files"] == res["files"] else f" ({c['files']} files)"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
