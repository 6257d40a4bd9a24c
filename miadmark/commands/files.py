"""Walking CLI inputs and reporting per-file outcomes: shared by protect and strip.

One file's failure is one stderr line (`FILE: reason`) and never stops the run; the summary line
always comes, and the exit status is non-zero when anything failed. With many files a progress
bar (tqdm, on stderr) shows when stderr is a terminal or --progress is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def add_progress_option(parser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


@dataclass
class Tally:
    verb: str  # "protected" / "stripped"
    done: int = 0
    failed: int = 0
    skipped: list[Path] = field(default_factory=list)
    bar: Any = None  # a tqdm bar while one is shown

    def start_progress(self, total: int, wanted: bool | None) -> None:
        shown = wanted if wanted is not None else sys.stderr.isatty()
        if shown and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc=self.verb, file=sys.stderr, dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _say(self, line: str, file) -> None:
        if self.bar is not None:
            self.bar.write(line, file=file)  # above the bar, not through it
        else:
            print(line, file=file)

    def note(self, line: str) -> None:
        """An input that is neither written nor failed (a lesion mask source)."""
        self._say(line, sys.stdout)
        self.advance()

    def ok(self, src: Path, dst: Path) -> None:
        self.done += 1
        self._say(f"{self.verb} {src} -> {dst}", sys.stdout)
        self.advance()

    def fail(self, src: Path, reason: str) -> None:
        self.failed += 1
        self._say(f"{src}: {reason}", sys.stderr)
        self.advance()

    def summary(self) -> int:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for path in self.skipped:  # every file gets its line
            print(f"skipped {path}: not DICOM (no DICM marker)")
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
