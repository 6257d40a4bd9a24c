"""What a long-running service loads once per process: signing identities and certificates (keyed by
path and modification time, so a replaced file is read again) and watermark engines (keyed by profile
and device: a torch model and its surrogates are costly to build).

The gateway, the receiving node, the Orthanc plugin and the cohort release all load through here; the
one-shot CLI commands call miadmark.keys directly. A file that fails to load is not cached: the same
error comes again on the next call (fail closed).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .keys import Identity, load_certificate, load_identity, read_passphrase

_lock = threading.Lock()
_identities: dict[tuple, Identity] = {}
_certificates: dict[tuple, object] = {}
_engines: dict[tuple[str, str], object] = {}
_engine_lock = threading.Lock()  # apart: building an engine takes seconds, certificates must not wait


def _stamp(path: str | os.PathLike | None) -> tuple:
    """(path, mtime_ns, size), or (path, None, None) when it cannot be read (the loader then names the error)."""
    if path is None:
        return (None, None, None)
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None, None)
    return (str(Path(path)), st.st_mtime_ns, st.st_size)


def identity(key_path: str | os.PathLike, cert_path: str | os.PathLike,
             passphrase_file: str | os.PathLike | None = None) -> Identity:
    """load_identity(key, cert, read_passphrase(passphrase_file)), once per version of the three files."""
    stamp = (_stamp(key_path), _stamp(cert_path), _stamp(passphrase_file))
    with _lock:
        found = _identities.get(stamp)
    if found is None:
        found = load_identity(key_path, cert_path, read_passphrase(passphrase_file))
        with _lock:
            _identities[stamp] = found
    return found


def certificate(path: str | os.PathLike):
    stamp = _stamp(path)
    with _lock:
        found = _certificates.get(stamp)
    if found is None:
        found = load_certificate(path)
        with _lock:
            _certificates[stamp] = found
    return found


def certificates(paths) -> list:
    return [certificate(p) for p in paths]


def engine(profile: str | None, device: str):
    """The engine for a profile name (None: the default profile) on a device, built once per process."""
    from .engine import get_engine, resolve_profile
    key = (resolve_profile(profile, device), str(device))  # `auto` and the engine it means share one
    with _engine_lock:
        if key not in _engines:
            _engines[key] = get_engine(key[0], device)
        return _engines[key]


def warm(profiles, device: str) -> None:
    """Load now what a service's first protect would load: the protect step's modules and the engine of
    each profile (None: the default), so that the first export does not import torch and build an engine
    (about a second on a CPU) while its destination waits."""
    from . import protect  # noqa: F401 - its imports (pixels, records, signing)
    from .engine import DEFAULT_PROFILE
    for profile in dict.fromkeys(profiles):
        engine(profile or DEFAULT_PROFILE, device)


def forget() -> None:
    """Drop everything (tests)."""
    with _lock, _engine_lock:
        _identities.clear()
        _certificates.clear()
        _engines.clear()
