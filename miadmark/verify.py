"""Is what a destination stored exactly what was sent? (`miadmark verify SENT RECEIVED`)

A DICOM network hop may re-encode an object without changing it, so `cmp` of the two files is the wrong
test. Allowed, and only listed: the transfer syntax between Implicit and Explicit VR Little Endian (same
value bytes, other element headers), group length elements (gggg,0000) dropped or recomputed, the File Meta
Information (never sent over an association: the receiver writes its own), dataset trailing padding,
defined versus undefined lengths of sequences and items, and the trailing space (UI: NUL) padding of text
values, which PS3.5 6.2 defines as insignificant (dcmtk writes a PN of two spaces as empty). Everything else
must be equal: the same elements at every nesting level with the same value bytes, Pixel Data included.
A difference is named by its tag and keyword, never by its value.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from .dicomio import truncation
from .errors import safe_reason

PIXEL_DATA = Tag(0x7FE0, 0x0010)
# text VRs whose trailing padding is not part of the value (PS3.5 6.2)
PADDED_TEXT = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)


@dataclass
class Comparison:
    differences: list[str] = field(default_factory=list)  # value-free: tag, keyword, what differs
    allowed: list[str] = field(default_factory=list)  # the re-encodings seen
    pixel_data_equal: bool | None = None  # None: neither has Pixel Data
    repadded: list[str] = field(default_factory=list)  # text values equal but for their trailing padding

    @property
    def same(self) -> bool:
        return not self.differences


def compare_files(sent: str | os.PathLike, received: str | os.PathLike) -> Comparison:
    return compare_bytes(Path(sent).read_bytes(), Path(received).read_bytes())


def compare_bytes(sent: bytes, received: bytes) -> Comparison:
    out = Comparison()
    if sent == received:
        out.allowed.append("the files are identical byte for byte")
        return out
    a, b = _read(sent, "SENT", out), _read(received, "RECEIVED", out)
    if a is None or b is None:
        return out
    ts_a, ts_b = _transfer_syntax(a), _transfer_syntax(b)
    if ts_a != ts_b:
        if _little_endian_native(ts_a) and _little_endian_native(ts_b):
            out.allowed.append(f"transfer syntax {_ts_name(ts_a)} -> {_ts_name(ts_b)}")
        else:  # a compressed or big endian hop changes the Pixel Data bytes: not the same object
            out.differences.append(f"transfer syntax {_ts_name(ts_a)} -> {_ts_name(ts_b)}")
    if _meta_bytes(a) != _meta_bytes(b):
        out.allowed.append("File Meta Information rewritten by the receiver")
    raw = _little_endian(ts_a) and _little_endian(ts_b)
    groups = _compare(a, b, "", raw, out)
    if groups:
        out.allowed.append(f"group lengths dropped or recomputed ({groups})")
    if out.repadded:
        out.allowed.append(f"trailing padding of text values: {', '.join(out.repadded)}")
    if PIXEL_DATA in a or PIXEL_DATA in b:
        out.pixel_data_equal = not any(d.startswith("(7FE0,0010)") for d in out.differences)
    return out


def _read(data: bytes, side: str, out: Comparison) -> Dataset | None:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        cut = truncation(ds, len(data))
    except RecursionError:
        cut = "sequences nested too deeply"
    except Exception as exc:  # noqa: BLE001 - any parse failure: that side cannot be compared
        cut = f"unreadable DICOM ({safe_reason(exc)})"
    if cut:
        out.differences.append(f"{side}: {cut}")
        return None
    return ds


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _ts_name(uid: str) -> str:
    return pydicom.uid.UID(uid).name if uid else "(none)"


def _little_endian(uid: str) -> bool:
    return uid != pydicom.uid.ExplicitVRBigEndian


def _little_endian_native(uid: str) -> bool:
    return uid in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, "")


def _meta_bytes(ds: Dataset) -> bytes:
    meta = getattr(ds, "file_meta", None)
    return b"" if meta is None else repr(sorted((str(e.tag), str(e.value)) for e in meta)).encode()


def _name(tag: Tag, path: str) -> str:
    kw = keyword_for_tag(tag) or ("private" if tag.group % 2 else "unknown")
    return f"{path}({tag.group:04X},{tag.element:04X}) {kw}"


def _compare(a: Dataset, b: Dataset, path: str, raw: bool, out: Comparison) -> int:
    """Record the differences of two datasets; return how many group length elements were set aside."""
    def significant(ds: Dataset) -> tuple[set, int]:
        tags = set(ds.keys())
        lengths = {t for t in tags if t.element == 0x0000}
        return tags - lengths - {TRAILING_PADDING}, len(lengths)

    tags_a, groups_a = significant(a)
    tags_b, groups_b = significant(b)
    groups = groups_a + groups_b
    for tag in sorted(tags_a ^ tags_b):
        out.differences.append(f"{_name(tag, path)}: only in {'SENT' if tag in tags_a else 'RECEIVED'}")
    for tag in sorted(tags_a & tags_b):
        # value bytes as read: Implicit and Explicit VR Little Endian store a value identically
        raw_a, raw_b = a.get_item(tag), b.get_item(tag)
        elem_a, elem_b = a[tag], b[tag]
        if isinstance(elem_a.value, Sequence) or isinstance(elem_b.value, Sequence):
            groups += _compare_sequences(elem_a.value, elem_b.value, _name(tag, path), raw, out)
            continue
        if raw and hasattr(raw_a, "value_tell") and hasattr(raw_b, "value_tell"):
            equal = raw_a.value == raw_b.value
            if not equal and elem_a.VR in PADDED_TEXT and _unpadded(raw_a.value) == _unpadded(raw_b.value):
                out.repadded.append(_name(tag, path))
                continue
        else:
            equal = elem_a.value == elem_b.value
        if not equal:
            what = "bytes differ" if tag == PIXEL_DATA else "value differs"
            out.differences.append(f"{_name(tag, path)}: {what}")
    return groups


def _unpadded(value: bytes | None) -> bytes:
    return (value or b"").rstrip(b" \0")


def _compare_sequences(a, b, name: str, raw: bool, out: Comparison) -> int:
    if not isinstance(a, Sequence) or not isinstance(b, Sequence):
        out.differences.append(f"{name}: a sequence on one side only")
        return 0
    if len(a) != len(b):
        out.differences.append(f"{name}: {len(a)} item(s) sent, {len(b)} received")
        return 0
    return sum(_compare(x, y, f"{name}[{i}] ", raw, out) for i, (x, y) in enumerate(zip(a, b)))


# ---- folders: pair by SOP Instance UID ----------------------------------------------------------------

def sop_uid(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - not DICOM, or no UID: not a candidate
        return None


def dicom_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    yield from sorted(p for p in root.rglob("*") if p.is_file())


def pair(sent: Path, received: Path) -> tuple[list[tuple[Path, Path | None, str | None]], list[Path]]:
    """(sent file, its received file or None, UID) for each sent file, and the received files not paired."""
    if sent.is_file() and received.is_file():
        return [(sent, received, sop_uid(sent))], []
    by_uid: dict[str, Path] = {}
    for path in dicom_files(received):
        uid = sop_uid(path)
        if uid is not None:
            by_uid.setdefault(uid, path)
    pairs, used = [], set()
    for path in dicom_files(sent):
        uid = sop_uid(path)
        if uid is None:
            continue
        match = by_uid.get(uid)
        pairs.append((path, match, uid))
        if match is not None:
            used.add(match)
    return pairs, [p for p in by_uid.values() if p not in used]
