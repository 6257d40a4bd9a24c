"""Core protect/strip over the real CT series: per stage and end to end, per profile, and the record's size.

Per stage, one after the other in this thread (ms per slice): read (file -> dataset), decode (pixels to the model
domain, miadmark.protect._prepare), engine (the watermark, in batches), record (stored pixels, pixel payload,
sign, encrypt: _finish; its pixel payload alone beside it), encode (dataset -> bytes), strip (bytes -> original
file, checked byte for byte). End to end: protect_iter's pipeline (decode, engine, record + encode overlapping),
the serial sum of the stages beside it. Baseline in the same process: read + write back (the I/O every verb pays).

Run: .venv/bin/python benchmarks/core.py [--profiles plain fast] [--slices 96] [--batch 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miadmark import pixel_payload  # noqa: E402
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, read_dicom  # noqa: E402
from miadmark.engine import get_engine  # noqa: E402
from miadmark.keys import load_identity, new_identity  # noqa: E402
from miadmark.machine import describe  # noqa: E402
from miadmark.protect import (_finish, _prepare, _run_engine, keyed_contexts, open_record, protect_iter,  # noqa: E402
                              strip_bytes)
from miadmark.uids import UidMaker, scope_of, site_secret  # noqa: E402

SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct_chest_lidc0314" / "data"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", "--profiles", dest="profiles", nargs="*", default=["plain"])
    ap.add_argument("--slices", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    files = sorted(SERIES.glob("*.dcm"))[: args.slices]
    out = {"machine": describe(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "slices": len(files), "batch": args.batch, "profiles": {}}
    print(f"{out['machine']}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"series: {len(files)} CT slices 512x512 16-bit, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        hospital = load_identity(*new_identity("hospital", tmp))
        research = load_identity(*new_identity("research", tmp))
        t0 = time.perf_counter()
        for f in files:
            dataset_to_bytes(read_dicom(f))
        out["baseline_read_write_ms"] = round((time.perf_counter() - t0) / len(files) * 1000, 1)
        print(f"baseline read+encode: {out['baseline_read_write_ms']} ms/slice")
        for name in args.profiles:
            engine = get_engine(name, args.device)
            protect_series([read_dicom(files[0])], engine, 1, [research.cert], hospital)  # warm: models loaded
            row = stages(files, engine, args.batch, research, hospital)
            originals = [read_dicom(f) for f in files]
            protected, per_slice = protect_series(originals, engine, args.batch, [research.cert], hospital)
            row["pipeline_ms"] = round(per_slice * 1000, 1)
            row["pipeline_slices_s"] = round(1 / per_slice, 2)
            records = [open_record(dataset_from_bytes(p), [research]) for p in protected]
            row["payload_kinds"] = sorted({r.payload_kind for r in records})
            row["payload_kib"] = round(sum(len(r.payload) for r in records) / len(records) / 1024, 1)
            row["record_kib"] = round(sum(len(read_record_bytes(p)) for p in protected) / len(protected) / 1024, 1)
            out["profiles"][name] = row
            print(f"{name}: " + ", ".join(f"{k} {row[k]}" for k in STAGES)
                  + f" ms/slice (serial sum {row['serial_ms']}); pipeline {row['pipeline_ms']} ms/slice = "
                  f"{row['pipeline_slices_s']} slices/s; pixel payload {row['payload_kib']} KiB/slice "
                  f"{row['payload_kinds']}, record {row['record_kib']} KiB; "
                  f"strip exact {row['strip_exact']}/{len(files)}")
    names = list(out["profiles"])
    if "plain" in names:
        for name in names:
            if name != "plain":
                out["profiles"][name]["pipeline_vs_plain"] = round(
                    out["profiles"]["plain"]["pipeline_ms"] / out["profiles"][name]["pipeline_ms"], 3)
                print(f"{name} end to end / plain: {out['profiles'][name]['pipeline_vs_plain']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


STAGES = ("read", "decode", "engine", "record", "payload", "encode", "strip")


def stages(files: list[Path], engine, batch: int, research, hospital) -> dict:
    """ms per slice of each stage, run one after the other in this thread."""
    t = dict.fromkeys(STAGES, 0.0)
    secret = site_secret(hospital.key)
    uid_maker = UidMaker(secret, scope_of(None, [research.cert]))
    exact = 0
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        t0 = time.perf_counter()
        datasets = [read_dicom(f) for f in chunk]
        t1 = time.perf_counter()
        preps = [_prepare(ds, None, None, False) for ds in datasets]
        for p in preps:  # as protect_iter does: the spread mark's per-frame key
            p["contexts"] = keyed_contexts(p["contexts"], secret)
        t2 = time.perf_counter()
        x_new, params = _run_engine(engine, *[_cat([p[k] for p in preps]) for k in ("x", "lesion")],
                                    [c for p in preps for c in p["contexts"]])
        t3 = time.perf_counter()
        prots = [_finish(p, x_new[i:i + 1], params[i:i + 1], [research.cert], hospital, engine, uid_maker)
                 for i, p in enumerate(preps)]
        t4 = time.perf_counter()
        data = [dataset_to_bytes(p) for p in prots]
        t5 = time.perf_counter()
        for ds, prot in zip(datasets, prots):  # the pixel payload alone (also inside `record`)
            dtype = pixel_payload.word_dtype(int(ds.BitsAllocated), len(prot.PixelData))
            pixel_payload.encode_pixels(bytes(ds.PixelData), bytes(prot.PixelData), dtype)
        t6 = time.perf_counter()
        for f, d in zip(chunk, data):
            exact += strip_bytes(dataset_from_bytes(d), keyring=[research], trust=[hospital.cert]) == f.read_bytes()
        t7 = time.perf_counter()
        for k, dt in zip(("read", "decode", "engine", "record", "encode", "payload", "strip"),
                         (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            t[k] += dt
    row = {k: round(v / len(files) * 1000, 1) for k, v in t.items()}
    row["serial_ms"] = round(sum(row[k] for k in ("read", "decode", "engine", "record", "encode")), 1)
    row["strip_exact"] = exact
    return row


def _cat(arrays):
    import numpy as np

    return np.concatenate(arrays)


def protect_series(originals: list, engine, batch: int, recipients: list, signer) -> tuple[list[bytes], float]:
    """The datasets through protect_iter's pipeline (decode -> watermark -> record -> encode, overlapping),
    `batch` frames per engine call, each result encoded as it would be sent: the bytes, in input order, and the
    seconds per slice."""
    t0 = time.perf_counter()
    protected: list = [None] * len(originals)
    for i, p in protect_iter(originals, recipients=recipients, signer=signer, engine=engine, batch_frames=batch,
                             encode=dataset_to_bytes):
        if isinstance(p, Exception):
            raise p
        protected[i] = p
    return protected, (time.perf_counter() - t0) / len(originals)


def read_record_bytes(data: bytes) -> bytes:
    return bytes(dataset_from_bytes(data).EncryptedAttributesSequence[0].EncryptedContent)


if __name__ == "__main__":
    main()
