"""Walking CLI inputs and reporting per-file outcomes: shared by protect and strip."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class InputFile:
    path: Path
    relative: Path  # where it goes under --out


def looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_inputs(inputs: list[str], skipped: list[Path]) -> Iterator[InputFile]:
    """Named files are always tried (a bad one is an error); folders are walked for DICOM files.

    Files inside folders that are not DICOM (no DICM marker) are listed in `skipped`, not failed.
    """
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if looks_like_dicom(path):
                    yield InputFile(path, path.relative_to(root))
                else:
                    skipped.append(path)
        else:
            yield InputFile(root, Path(root.name))


@dataclass
class Tally:
    verb: str  # "protected" / "stripped"
    done: int = 0
    failed: int = 0
    skipped: list[Path] = field(default_factory=list)

    def ok(self, src: Path, dst: Path) -> None:
        self.done += 1
        print(f"{self.verb} {src} -> {dst}")

    def fail(self, src: Path, reason: str) -> None:
        self.failed += 1
        print(f"{src}: {reason}", file=sys.stderr)

    def summary(self) -> int:
        line = f"{self.done} {self.verb}, {self.failed} failed"
        if self.skipped:
            line += f", {len(self.skipped)} skipped (not DICOM)"
        print(line)
        return 1 if self.failed else 0


def output_path(out_dir: Path, item: InputFile) -> Path:
    dst = out_dir / item.relative
    if dst.resolve() == item.path.resolve():
        raise ValueError("output would overwrite the input; choose another --out")
    return dst
