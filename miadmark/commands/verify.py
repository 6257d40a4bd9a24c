"""`miadmark verify SENT RECEIVED`: is what the destination stored exactly what was sent (files or folders)?"""

from __future__ import annotations

import sys
from pathlib import Path

from ..verify import compare_files, pair


def register(sub) -> None:
    p = sub.add_parser("verify", help="check that received DICOM objects are exactly the ones sent, after a "
                       "network hop's allowed re-encodings; differences named by tag, never by value")
    p.add_argument("sent", help="the file or folder that was sent")
    p.add_argument("received", help="what the destination stored: a file, or a folder (paired by SOP Instance UID)")
    p.add_argument("--quiet", action="store_true", help="print only the objects that differ and the summary")
    p.set_defaults(func=run)


def run(args) -> int:
    sent, received = Path(args.sent), Path(args.received)
    for path in (sent, received):
        if not path.exists():
            print(f"miadmark verify: {path}: no such file or folder", file=sys.stderr)
            return 2
    pairs, unpaired = pair(sent, received)
    same = differ = missing = 0
    for src, dst, uid in pairs:
        if dst is None:
            missing += 1
            print(f"MISSING {src}: SOP Instance UID {uid} is not in {received}")
            continue
        result = compare_files(src, dst)
        if result.same:
            same += 1
            if not args.quiet:
                pixels = {True: "; Pixel Data bytes equal", None: "", False: ""}[result.pixel_data_equal]
                allowed = f" (allowed: {'; '.join(result.allowed)})" if result.allowed else ""
                print(f"same    {src} = {dst}{pixels}{allowed}")
        else:
            differ += 1
            print(f"DIFFERS {src} != {dst}: {'; '.join(result.differences)}")
    line = f"{same} same, {differ} differ, {missing} missing"
    if unpaired:
        line += f" ({len(unpaired)} received object(s) were not among those sent)"
    print(line)
    if not pairs:
        print(f"miadmark verify: no DICOM object with a SOP Instance UID in {sent}", file=sys.stderr)
        return 2
    return 0 if same == len(pairs) else 1
