"""Compressed pixel data is decoded first in a worker process, where a decoder crash cannot take the
forwarder down.

A JPEG object whose header says BitsAllocated 32 makes gdcm throw through C++ and abort() (SIGABRT):
no try/except catches that, so decoding it in the forwarding process crash-looped the service and
delayed every other study. Before an image with a compressed transfer syntax is protected, the probe
decodes it the way the core does (miadmark.pixels.decode) in one persistent worker process. If the
worker dies, that counts a crash for the instance and the worker is restarted; an instance that
crashed the worker twice is poison: it is quarantined, never decoded in the forwarder. A decode that
raises is not a crash: the core then refuses the image with its named error as usual.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from pathlib import Path

log = logging.getLogger("dicom_node.forward")
CRASHES_TO_QUARANTINE = 2
DECODE_TIMEOUT_S = 120.0  # a decoder that hangs this long is treated like one that crashed


def _worker(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from miadmark.dicomio import read_dicom
    from miadmark.pixels import decode
    while True:
        try:
            path = conn.recv()
        except EOFError:
            return
        try:
            decode(read_dicom(path))
            conn.send("ok")
        except Exception as exc:  # noqa: BLE001 - a named refusal is the core's to give, not a crash
            conn.send(f"error {type(exc).__name__}")


class DecodeProbe:
    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None
        self.crashes: dict[str, int] = {}

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child,), name="miadmark-decode-probe", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def poison(self, key: str, path: Path) -> str | None:
        """None when the image decodes (or fails to decode with an exception) in the worker; the reason
        when it crashed the worker CRASHES_TO_QUARANTINE times."""
        with self._lock:
            while self.crashes.get(key, 0) < CRASHES_TO_QUARANTINE:
                how = self._try(path)
                if how is None:
                    return None
                self.crashes[key] = self.crashes.get(key, 0) + 1
                log.error("%s crashed the pixel decoder (%s), crash %d of %d", Path(path).name, how,
                          self.crashes[key], CRASHES_TO_QUARANTINE)
            return f"pixel decoder crashed {self.crashes[key]} times on this image ({how}): not decoded in the service"

    def _try(self, path: Path) -> str | None:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send(str(path))
            if self._conn.poll(DECODE_TIMEOUT_S):
                self._conn.recv()
                return None
            how = f"no answer in {DECODE_TIMEOUT_S:.0f} s"
        except (EOFError, OSError):
            self._proc.join(5)
            code = self._proc.exitcode
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
        self._stop()
        return how
