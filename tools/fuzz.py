"""Mutation fuzzing of `protect` and `strip` on untrusted input: every mutant must be a named refusal.

    nice -n 15 python tools/fuzz.py --mutants 10000 --seed 1 --json docs/fuzz/summary.json

Seeds are the small real files of ../shared/data/dicom (CT, PET, enhanced MR and every transfer syntax).
Mutant i is a pure function of (--seed, i): `--only I` replays one. Each mutant runs in a child forked
from this process (keys and engine already loaded), under an address-space limit and a timeout, so
that an abort, a segfault, a Rust panic, a runaway allocation or a hang is counted, not suffered.

A mutant's outcome is one of:
  ok                   protect (or strip) succeeded and the output encodes
  refused:<Error>      a MiadmarkError subclass (a clean refusal); UnexpectedInputError is counted apart:
                       it is the last-resort net, each one names an input check still missing
  uncaught:<Exception> anything else escaped the core
  crash:<SIGNAL>       the child died by a signal (abort, segfault)
  timeout              the child was killed after --timeout seconds
Plain mutants go through read_dicom -> protect (profile plain) -> encode, as the CLI does; protected
mutants (a file protected here, then its record, CMS, algorithm identifiers or content mutated, or its
record re-signed with malformed fields) go through read_dicom -> strip -> encode.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children must not inherit a thread pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dicom"
MAX_SEED_BYTES = 600_000
SEEDS_PER_FOLDER = 6  # the PET series has 299 near-identical slices: a few represent it

RLE = "1.2.840.10008.1.2.5"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", RLE, "1.2.3.4.5.6.7", ""]
HEADER_FIELDS = {
    "Rows": [0, 1, 2, 3, 255, 4096, 65535], "Columns": [0, 1, 2, 3, 255, 4096, 65535],
    "BitsAllocated": [0, 1, 7, 8, 12, 16, 24, 32, 64, 65535], "BitsStored": [0, 1, 8, 12, 16, 17, 32, 64],
    "HighBit": [0, 7, 11, 15, 31, 63], "SamplesPerPixel": [0, 1, 2, 3, 4, 65535],
    "PixelRepresentation": [0, 1, 2], "PlanarConfiguration": [0, 1, 2],
    "NumberOfFrames": ["0", "-1", "1", "2", "1000", "99999999", "1.5", "x"],
    "PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
                                  "YBR_FULL_422", "YBR_ICT", "HSV", ""],
    "RescaleSlope": ["0", "-1", "1e308", "nan", "inf", "abc"], "RescaleIntercept": ["1e308", "nan", "x"],
    "WindowCenter": ["nan", "1e308", "-inf", "abc"], "WindowWidth": ["0", "-5", "nan", "1e308", "abc"],
}
PLAIN_OPS = ["byte_flip", "byte_flip_header", "byte_flip_pixels", "truncate", "corrupt_length", "corrupt_vr",
             "header_value", "huge_dimensions", "huge_rle", "nested_sequences", "transfer_syntax",
             "short_pixel_data", "empty_pixel_data", "jpeg_bits_32", "bad_value", "garbage"]
PROTECTED_OPS = ["flip_cms", "truncate_cms", "empty_content", "flip_algorithm_oid", "content_syntax",
                 "drop_record_item", "flip_protected_byte", "resigned_record"]


# ---- the corpus --------------------------------------------------------------------------------

def seed_files(data: Path) -> list[Path]:
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(data.rglob("*.dcm")):
        if path.stat().st_size <= MAX_SEED_BYTES:
            by_folder[path.parent].append(path)
    seeds = []
    for files in by_folder.values():
        step = len(files) // SEEDS_PER_FOLDER if len(files) > 3 * SEEDS_PER_FOLDER else 1
        seeds += files[::step]
    return seeds


def raw_elements(data: bytes):
    """(tag, vr, value_offset, length, explicit) of every top-level element, from pydicom's raw reader."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    out = []
    for dataset in (ds.file_meta, ds):
        for tag in list(dataset.keys()):
            raw = dataset.get_item(tag)
            tell = getattr(raw, "value_tell", None)
            if tell is not None:
                explicit = dataset is ds.file_meta or not ds.original_encoding[0]
                out.append((int(tag), raw.VR, tell, raw.length, explicit))
    return out


def mutate_plain(data: bytes, op: str, rng: random.Random) -> bytes:
    import pydicom

    buf = bytearray(data)
    if op in ("byte_flip", "byte_flip_header", "byte_flip_pixels"):
        lo, hi = 0, len(buf)
        if op == "byte_flip_header":
            hi = min(len(buf), 4096)
        elif op == "byte_flip_pixels":
            elems = [e for e in raw_elements(data) if e[0] == 0x7FE00010]
            if elems:
                lo = elems[0][2]
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op == "truncate":
        return bytes(buf[: rng.randrange(0, len(buf))])
    if op in ("corrupt_length", "corrupt_vr"):
        elems = raw_elements(data)
        tag, vr, tell, length, explicit = rng.choice(elems)
        long_vr = vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT", "UC", "UR", "SV", "UV", None)
        if op == "corrupt_length":
            width = 4 if (not explicit or long_vr) else 2
            value = rng.choice([0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, length + 1, length * 2 + 2,
                                max(length - 2, 0), rng.randrange(1 << (8 * width))]) & ((1 << (8 * width)) - 1)
            buf[tell - width:tell] = value.to_bytes(width, "little")
        elif explicit:
            at = tell - (8 if long_vr else 4)
            new = rng.choice([b"SQ", b"UN", b"OB", b"OW", b"US", b"UL", b"DS", b"IS", b"AT", b"XX", b"\0\0"])
            buf[at:at + 2] = new
        return bytes(buf)
    if op == "garbage":
        return b"\0" * 128 + b"DICM" + rng.randbytes(rng.randrange(0, 4096))
    if op == "nested_sequences":
        depth = rng.choice([100, 1000, 10_000, 100_000])
        item = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff")
        seq_head = b"\xf3\x7f\x00\x10" + b"SQ\0\0" + b"\xff\xff\xff\xff"  # (7FF3,1000) SQ, undefined length
        close = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
        if b"\x01\x00\x02\x10" in data[:400] and data.find(b"1.2.840.10008.1.2\0") > 0:
            seq_head = b"\xf3\x7f\x00\x10" + b"\xff\xff\xff\xff"  # implicit VR
        return data + (seq_head + item) * depth + close * depth

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if op == "header_value":
        for _ in range(rng.randint(1, 3)):
            keyword = rng.choice(sorted(HEADER_FIELDS))
            setattr(ds, keyword, rng.choice(HEADER_FIELDS[keyword]))
    elif op == "huge_dimensions":
        ds.Rows, ds.Columns = rng.choice([(65535, 65535), (65535, 1), (30000, 30000), (4096, 4096)])
        if rng.random() < 0.5:
            ds.NumberOfFrames = str(rng.choice([100, 10_000, 2_000_000_000]))
    elif op == "huge_rle":
        from pydicom.encaps import encapsulate
        ds.file_meta.TransferSyntaxUID = RLE
        header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + b"\0" * 56
        ds.PixelData = encapsulate([header + b"\x81\x00" * rng.choice([1, 64, 4096])])
        ds["PixelData"].VR = "OB"
        ds.Rows = ds.Columns = 65535
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    elif op == "transfer_syntax":
        ds.file_meta.TransferSyntaxUID = rng.choice(TRANSFER_SYNTAXES)
        return _write_raw(ds, data)
    elif op in ("short_pixel_data", "empty_pixel_data"):
        if "PixelData" in ds:
            value = bytes(ds.PixelData)
            ds.PixelData = b"" if op == "empty_pixel_data" else value[: rng.randrange(0, max(len(value), 1)) & ~1]
    elif op == "jpeg_bits_32":
        ds.BitsAllocated = 32
        ds.BitsStored = rng.choice([12, 16, 32])
        ds.HighBit = ds.BitsStored - 1
    elif op == "bad_value":
        keyword, value = rng.choice([("SliceThickness", "1.5mm"), ("PixelSpacing", "a\\b"),
                                     ("ImagePositionPatient", "x\\y\\z"), ("RescaleSlope", "SECRET-VALUE"),
                                     ("StudyDate", "SECRET-VALUE"), ("SOPInstanceUID", "1.2.SECRET-VALUE")])
        ds[keyword].value = value if keyword in ds else None
        if keyword not in ds:
            setattr(ds, keyword, value)
    return _write(ds, data)


def _write(ds, fallback: bytes) -> bytes:
    import pydicom

    out = io.BytesIO()
    try:
        pydicom.dcmwrite(out, ds, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - a mutation pydicom cannot even write: keep the bytes unchanged
        return fallback
    return out.getvalue()


def _write_raw(ds, fallback: bytes) -> bytes:
    """Only the file meta is re-encoded: the body keeps its bytes (and its real transfer syntax)."""
    from pydicom.filewriter import write_file_meta_info
    from pydicom.filebase import DicomBytesIO

    offset = 132
    meta_len = int.from_bytes(fallback[140:144], "little") if fallback[128:132] == b"DICM" else 0
    body = fallback[144 + meta_len:] if meta_len else fallback[offset:]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    try:
        write_file_meta_info(fp, ds.file_meta, enforce_standard=False)
    except Exception:  # noqa: BLE001
        return fallback
    return b"\0" * 128 + b"DICM" + fp.getvalue() + body


AES256_CBC_OID = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42
RSA_OID = bytes.fromhex("06092a864886f70d010101")


def mutate_protected(data: bytes, op: str, rng: random.Random, ctx: dict) -> bytes:
    import pydicom

    if op == "flip_protected_byte":
        buf = bytearray(data)
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    ds = pydicom.dcmread(io.BytesIO(data))
    item = ds.EncryptedAttributesSequence[0]
    cms = bytearray(item.EncryptedContent)
    if op == "flip_cms":
        for _ in range(rng.randint(1, 4)):
            cms[rng.randrange(len(cms))] ^= 1 << rng.randrange(8)
        item.EncryptedContent = bytes(cms)
    elif op == "truncate_cms":
        item.EncryptedContent = bytes(cms[: rng.randrange(len(cms))])
    elif op == "empty_content":
        item.EncryptedContent = rng.choice([b"", None, b"\x30\x00"])
    elif op == "flip_algorithm_oid":
        oid = rng.choice([AES256_CBC_OID, RSA_OID])
        at = bytes(cms).find(oid)
        if at >= 0:
            cms[at + len(oid) - 1] ^= 1 << rng.randrange(8)
        item.EncryptedContent = bytes(cms)
    elif op == "content_syntax":
        item.EncryptedContentTransferSyntaxUID = rng.choice(["1.2.840.10008.1.2", "", "1.2.3"])
    elif op == "drop_record_item":
        ds.EncryptedAttributesSequence = []
    elif op == "resigned_record":
        item.EncryptedContent = resigned_content(ds, rng, ctx)
    return _write(ds, data)


def resigned_content(ds, rng: random.Random, ctx: dict) -> bytes:
    """The record opened, one field malformed, signed again by the trusted key: only the parser stands."""
    from pydicom.dataset import Dataset

    from miadmark import record as rec_mod

    ident = ctx["identity"]
    rec = rec_mod.verify_record(rec_mod.decrypt(bytes(ds.EncryptedAttributesSequence[0].EncryptedContent),
                                                [ident]))
    field = rng.choice(["payload", "payload_kind", "word_type", "file_meta", "added_tags", "modified",
                        "pixel_vr", "original_sha256", "params"])
    if field == "payload":
        rec.payload = rng.choice([b"", b"\0" * 64, rng.randbytes(200), rec.payload[: len(rec.payload) // 2]])
    elif field == "payload_kind":
        rec.payload_kind = rng.choice(["", "ORIGINAL", "CHANGED_WORDS", "OTHER"])
    elif field == "word_type":
        rec.word_type = rng.choice(["", "<u9", "<f8", "xx", "<u1", "<u4", "O"])
    elif field == "file_meta":
        rec.file_meta = rng.choice([b"", rng.randbytes(64), rec.file_meta[:10]])
    elif field == "added_tags":
        rec.added_tags = rng.choice([[0x7FE00010], [0x00080016, 0x00020010], [0xFFFFFFFF]])
    elif field == "modified":
        rec.modified = Dataset()
        rec.modified.add_new(0x7FE00010, "OB", rng.randbytes(16))
    elif field == "pixel_vr":
        rec.pixel_vr = rng.choice(["", "SQ", "XX", "UN"])
    elif field == "original_sha256":
        rec.original_sha256 = ""
    else:
        rec.params = {}
    return rec_mod.encrypt(rec_mod.sign_record(rec, ident), [ident.cert])


def make_mutant(index: int, seed: int, seeds: list[Path], protected: list[bytes], ctx: dict,
                protected_share: float) -> tuple[str, str, bytes]:
    rng = random.Random(f"{seed}:{index}")
    if rng.random() < protected_share and protected:
        source = rng.randrange(len(protected))
        op = rng.choice(PROTECTED_OPS)
        return "strip", f"protected[{source}]:{op}", mutate_protected(protected[source], op, rng, ctx)
    path = rng.choice(seeds)
    op = rng.choice(PLAIN_OPS)
    data = path.read_bytes()
    try:
        mutant = mutate_plain(data, op, rng)
    except Exception:  # noqa: BLE001 - a seed this mutation does not apply to: flip bytes instead
        op = "byte_flip"
        mutant = mutate_plain(data, op, rng)
    name = path.relative_to(DEFAULT_DATA.parent) if path.is_relative_to(DEFAULT_DATA.parent) else path
    return "protect", f"{name}:{op}", mutant


# ---- one mutant in a child ---------------------------------------------------------------------

def attack(verb: str, data: bytes, ctx: dict) -> None:
    """The target itself, as the CLI runs it: read, protect (or strip), encode. Raises what escapes."""
    from miadmark.dicomio import dataset_to_bytes, read_dicom
    from miadmark.protect import protect, strip

    ds = read_dicom(io.BytesIO(data))
    if verb == "protect":
        out = protect(ds, recipients=[ctx["identity"].cert], signer=ctx["identity"], engine=ctx["engine"])
    else:
        out = strip(ds, keyring=[ctx["identity"]], trust=[ctx["identity"].cert])
    dataset_to_bytes(out)


def run_target(verb: str, data: bytes, ctx: dict) -> dict:
    from miadmark.errors import MiadmarkError

    try:
        attack(verb, data, ctx)
    except MiadmarkError as exc:
        return {"outcome": f"refused:{type(exc).__name__}", "reason": str(exc)[:300]}
    except BaseException as exc:  # noqa: BLE001 - what the fuzzer is looking for
        tb = traceback.extract_tb(exc.__traceback__)
        core = [f for f in tb if "/miadmark/" in f.filename][-1:]  # where it left our code, then the library
        where = [f"{Path(f.filename).name}:{f.lineno}" for f in core + tb[-3:]]
        return {"outcome": f"uncaught:{type(exc).__name__}", "reason": str(exc)[:300], "where": where}
    return {"outcome": "ok"}


def replay_inline(verb: str, data: bytes, ctx: dict) -> dict:
    """Debugging: the same target in this process (public entry points only, so a replay runs what a
    worker child runs), with the full traceback of whatever escapes or is refused; returns the outcome."""
    result = run_target(verb, data, ctx)
    if result["outcome"] != "ok":
        try:
            attack(verb, data, ctx)
        except BaseException:  # noqa: BLE001 - shown, not handled
            traceback.print_exc()
    return result


def vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


class Worker:
    """A child forked from this process (keys and engine loaded) that runs mutants one after another.

    Its address space is capped (RLIMIT_AS = its size at fork + --memory-mb) and its peak RSS is reset
    before each mutant (/proc/self/clear_refs), so each mutant's peak is measured alone. A mutant that
    kills it (abort, segfault) or outlives --timeout is counted as such, and a fresh worker is forked.
    fresh=True forks a new worker for every mutant (slower, nothing shared between mutants).
    """

    def __init__(self, ctx: dict, memory: int, fresh: bool = False):
        self.ctx, self.memory, self.fresh = ctx, memory, fresh
        self.pid = None

    def _start(self) -> None:
        from multiprocessing import Pipe

        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            try:
                limit = vm_size_bytes() + self.memory
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                while True:
                    verb, data = child_end.recv()
                    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: this mutant's peak only
                    result = run_target(verb, data, self.ctx)
                    result["rss_mb"] = peak_rss_mb()
                    child_end.send(result)
            except EOFError:
                pass
            finally:
                os._exit(0)
        child_end.close()
        self.pid, self.conn = pid, parent_end

    def _reap(self, kill: bool) -> int:
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.conn.close()
        self.pid = None
        return status

    def run(self, verb: str, data: bytes, timeout: float) -> dict:
        if self.pid is None:
            self._start()
        start = time.monotonic()
        self.conn.send((verb, data))
        if self.conn.poll(timeout):
            try:
                result = self.conn.recv()
            except EOFError:  # died mid-mutant
                status = self._reap(kill=False)
                if os.WIFSIGNALED(status):
                    result = {"outcome": f"crash:{signal.Signals(os.WTERMSIG(status)).name}"}
                else:
                    result = {"outcome": f"crash:exit{os.WEXITSTATUS(status)}"}
                result["rss_mb"] = 0
        else:
            self._reap(kill=True)
            result = {"outcome": "timeout", "rss_mb": 0}
        result["seconds"] = round(time.monotonic() - start, 3)
        if self.fresh and self.pid is not None:
            self.conn.close()
            self._reap(kill=False)
        return result

    def close(self) -> None:
        if self.pid is not None:
            self.conn.close()
            self._reap(kill=False)


def peak_rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


# ---- the run -----------------------------------------------------------------------------------

def setup(protect_seeds: list[Path]) -> tuple[dict, list[bytes]]:
    import torch

    torch.set_num_threads(1)
    from miadmark.cli import quiet_pydicom
    from miadmark.dicomio import dataset_to_bytes, read_dicom
    from miadmark.engine import get_engine
    from miadmark.keys import load_identity, new_identity
    from miadmark.protect import protect

    quiet_pydicom()
    folder = tempfile.mkdtemp(prefix="miadmark-fuzz-")
    identity = load_identity(*new_identity("fuzz", folder))
    engine = get_engine("plain", "cpu")
    ctx = {"identity": identity, "engine": engine}
    protected = []
    for path in protect_seeds:
        # protecting the seeds runs the engine here; do it in a child so the parent stays thread-free
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                data = dataset_to_bytes(protect(read_dicom(path), recipients=[identity.cert], signer=identity,
                                                engine=engine))
                with os.fdopen(write_fd, "wb") as fh:
                    fh.write(data)
            finally:
                os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as fh:
            data = fh.read()
        os.waitpid(pid, 0)
        if data:
            protected.append(data)
    return ctx, protected


def merge(paths: list[Path]) -> dict:
    """One summary of several runs over disjoint index ranges (the 10,000 run is split across cores)."""
    parts = [json.loads(p.read_text()) for p in paths]
    outcomes, by_op, examples = Counter(), defaultdict(Counter), defaultdict(list)
    for part in parts:
        outcomes.update(part["outcomes"])
        for op, counts in part["by_mutation"].items():
            by_op[op].update(counts)
        for kind, items in part["examples"].items():
            examples[kind] += items[: 8 - len(examples[kind])]
    first = parts[0]
    return {
        "command": [part["command"] for part in parts],
        "mutants": sum(outcomes.values()), "seeds": first["seeds"], "protected_seeds": first["protected_seeds"],
        "seed": first["seed"], "seconds": max(part["seconds"] for part in parts),
        "outcomes": dict(sorted(outcomes.items())),
        **{key: sum(part[key] for part in parts) for key in ("uncaught", "crashes", "timeouts", "unexpected_caught")},
        "peak_rss_mb": max((part["peak_rss_mb"] for part in parts), key=lambda peak: peak["rss_mb"]),
        "parent_rss_mb": max(part["parent_rss_mb"] for part in parts),
        "memory_limit_mb_added": first["memory_limit_mb_added"], "timeout_s": first["timeout_s"],
        "by_mutation": {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())},
        "examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first mutant index")
    parser.add_argument("--only", type=int, action="append", help="replay these mutant indices only")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address space a child may add")
    parser.add_argument("--protected-share", type=float, default=0.2, help="share of mutants on protected files")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--log", type=Path, help="one JSON line per mutant")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--inline", action="store_true", help="run --only mutants in this process, with tracebacks")
    parser.add_argument("--fresh-child", action="store_true", help="a new child per mutant (default: one worker "
                        "child runs mutants until one kills it)")
    parser.add_argument("--stop-after-s", type=float, default=0,
                        help="start no new mutant after this many seconds (the summary says how many ran)")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these summaries into --json and exit")
    args = parser.parse_args(argv)
    if args.merge:
        text = json.dumps(merge(args.merge), indent=2)
        if args.json:
            args.json.write_text(text + "\n")
        print(text)
        return 0

    seeds = seed_files(args.data)
    protect_seeds = [p for p in seeds if p.stat().st_size < 200_000][::max(1, len(seeds) // 8)][:8]
    ctx, protected = setup(protect_seeds)
    indices = args.only or range(args.start, args.start + args.mutants)
    outcomes: Counter = Counter()
    by_op: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list] = defaultdict(list)
    peak = {"rss_mb": 0}
    log = open(args.log, "w") if args.log else None
    began = time.monotonic()
    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    worker = Worker(ctx, args.memory_mb << 20, fresh=args.fresh_child)
    for n, index in enumerate(indices):
        if args.stop_after_s and time.monotonic() - began > args.stop_after_s:
            break
        verb, label, data = make_mutant(index, args.seed, seeds, protected, ctx, args.protected_share)
        if args.inline:
            print(index, label, file=sys.stderr)
            result = {**replay_inline(verb, data, ctx), "rss_mb": peak_rss_mb()}
        else:
            result = worker.run(verb, data, args.timeout)
        outcome = result["outcome"]
        outcomes[outcome] += 1
        by_op[label.rsplit(":", 1)[1]][outcome] += 1
        if not outcome.startswith(("ok", "refused:")) or outcome == "refused:UnexpectedInputError":
            if len(examples[outcome]) < 8:
                examples[outcome].append({"index": index, "mutant": label, **{k: v for k, v in result.items()
                                                                              if k not in ("outcome",)}})
        if result["rss_mb"] > peak["rss_mb"]:
            peak = {"rss_mb": result["rss_mb"], "index": index, "mutant": label}
        if log:
            log.write(json.dumps({"index": index, "verb": verb, "mutant": label, **result}) + "\n")
            log.flush()
        if not args.quiet and (n + 1) % 100 == 0:
            print(f"{n + 1} mutants, {time.monotonic() - began:.0f} s: {dict(outcomes)}", file=sys.stderr)
    worker.close()
    summary = {
        "command": "python tools/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mutants": sum(outcomes.values()),
        "seeds": len(seeds), "protected_seeds": len(protected), "seed": args.seed,
        "seconds": round(time.monotonic() - began, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "uncaught": sum(v for k, v in outcomes.items() if k.startswith("uncaught:")),
        "crashes": sum(v for k, v in outcomes.items() if k.startswith("crash:")),
        "timeouts": outcomes.get("timeout", 0),
        "unexpected_caught": outcomes.get("refused:UnexpectedInputError", 0),
        "peak_rss_mb": peak, "parent_rss_mb": parent_rss,
        "memory_limit_mb_added": args.memory_mb, "timeout_s": args.timeout,
        "by_mutation": {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())},
        "examples": examples,
    }
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    bad = summary["uncaught"] + summary["crashes"] + summary["timeouts"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
