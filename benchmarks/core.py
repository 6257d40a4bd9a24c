"""Core protect/strip over the real CT series: seconds per slice and record size.

Baseline in the same process: reading the file and writing it back (the I/O every verb pays).
Run: .venv/bin/python benchmarks/core.py [--profile plain] [--slices 96]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom
from miadmark.engine import get_engine
from miadmark.keys import load_identity, new_identity
from miadmark.machine import describe
from miadmark.protect import open_record, protect_many, strip_bytes

SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="plain")
    ap.add_argument("--slices", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    files = sorted(SERIES.glob("*.dcm"))[: args.slices]
    with tempfile.TemporaryDirectory() as tmp:
        hk, hc = new_identity("hospital", tmp)
        rk, rc = new_identity("research", tmp)
        hospital, research = load_identity(hk, hc), load_identity(rk, rc)

        t0 = time.perf_counter()
        originals = [read_dicom(f) for f in files]
        for ds in originals:
            dataset_to_bytes(ds)
        baseline = (time.perf_counter() - t0) / len(files)

        protected, t_protect = protect_series(originals, get_engine(args.profile), args.batch, [research.cert],
                                              hospital)

        t0 = time.perf_counter()
        exact = 0
        for data, path in zip(protected, files):
            exact += strip_bytes(dataset_from_bytes(data), keyring=[research], trust=[hospital.cert]) == \
                path.read_bytes()
        t_strip = (time.perf_counter() - t0) / len(files)
        records = [open_record(dataset_from_bytes(p), [research]) for p in protected]

    size_in = sum(os.path.getsize(f) for f in files)
    size_out = sum(len(p) for p in protected)
    record = sum(len(read_record_bytes(p)) for p in protected) / len(protected)
    print(f"{describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads, protect on cpu")
    print(f"series: {len(files)} CT slices 512x512 16-bit, profile {args.profile}")
    print(f"baseline read+encode: {baseline * 1000:.1f} ms/slice")
    print(f"protect: {t_protect * 1000:.1f} ms/slice ({t_protect / baseline:.1f}x baseline)")
    print(f"strip:   {t_strip * 1000:.1f} ms/slice ({t_strip / baseline:.1f}x baseline), "
          f"original file byte for byte {exact}/{len(files)}")
    print(f"size: protected/original = {size_out / size_in:.4f}; "
          f"record (Encrypted Content) {record / 1024:.1f} KiB/slice")
    header = sum(len(r.original_file or b"") for r in records) / len(records)
    pixels = sum(len(r.payload) for r in records) / len(records)
    print(f"record parts: original file less Pixel Data {header / 1024:.2f} KiB/slice, "
          f"pixel payload {pixels / 1024:.1f} KiB/slice (LZMA)")


def protect_series(originals: list, engine, batch: int, recipients: list, signer) -> tuple[list[bytes], float]:
    """protect_many over the datasets, `batch` slices per call (decode -> watermark -> record -> encode), each
    result encoded as it would be sent: the protected bytes and the seconds per slice."""
    t0 = time.perf_counter()
    protected = []
    for i in range(0, len(originals), batch):
        for p in protect_many(originals[i:i + batch], recipients=recipients, signer=signer, engine=engine):
            if isinstance(p, Exception):
                raise p
            protected.append(dataset_to_bytes(p))
    return protected, (time.perf_counter() - t0) / len(originals)


def read_record_bytes(data: bytes) -> bytes:
    return bytes(dataset_from_bytes(data).EncryptedAttributesSequence[0].EncryptedContent)


if __name__ == "__main__":
    main()
