"""Files that may hold patient data (spool, received store, quarantine, queue database, audit):
owner-only, 0600 files in 0700 folders, whatever the process umask."""

from __future__ import annotations

import os
from pathlib import Path

from .dicomio import write_atomic

FILE_MODE, DIR_MODE = 0o600, 0o700


def private_dir(path: str | os.PathLike, *, tighten: bool = True) -> Path:
    """Create the folder (and missing parents) as 0700; tighten an existing one we own (unless told
    not to: a folder the audit log merely lives in may be shared with other files)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    if tighten and path.is_dir() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        os.chmod(path, DIR_MODE)
    return path


def write_private(data: bytes, path: str | os.PathLike) -> Path:
    """write_atomic (temp, fsync, rename, fsync folder) as 0600 in a 0700 folder."""
    path = Path(path)
    private_dir(path.parent)
    return write_atomic(data, path, mode=FILE_MODE)


def restrict_file(path: str | os.PathLike) -> None:
    """0600 on a file made by someone else's code (SQLite's database, WAL and shared-memory files)."""
    try:
        os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass
