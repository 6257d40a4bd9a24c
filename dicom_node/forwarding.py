"""The forwarding side of the gateway: the host of the per-destination Forwarder threads.

`miadmark gateway` runs it in a child process (its own GIL: receiving and forwarding then use two
cores instead of taking turns on one); tests may run it in threads of the receiving process.
Receiving and forwarding share only the spool folder and the SQLite queue.

The child dies with its parent (PR_SET_PDEATHSIG on Linux, plus a parent check), and holds an
exclusive lock on <spool>/forwarder.lock, so one spool never has two forwarders.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path

from miadmark.config import Config
from miadmark.logs import configure_child

from miadmark.audit import AuditLog
from miadmark.quarantine import quarantine

from .decode_probe import DecodeProbe
from .forwarder import Forwarder
from .transports import SENDABLE
from .protection import Protector
from .reload import ConfigWatcher
from .spool import Spool
from dicomnet.queue import LESION_KEEP_S, Queue

log = logging.getLogger("dicom_node.forward")
SWEEP_S = 60.0


class Forwarding:
    """What a Forwarder needs: config, queue, spool, protector, audit, quarantine, file release."""

    def __init__(self, config: Config):
        self.config = config
        self.spool = Spool(config.gateway.spool)
        self.queue = Queue(self.spool.queue_path)
        self.audit = AuditLog(config.gateway.audit)
        self.protector = Protector(config)
        self.decode_probe = DecodeProbe()  # compressed pixel data: decoded in a worker process first
        self.forwarders: dict[str, Forwarder] = {}
        self._sweep_lock = threading.Lock()
        self._swept_at = 0.0
        self._swept_until = 0.0  # lesion sources received before this were swept

    def start(self) -> "Forwarding":
        self._start_forwarders()
        return self

    def stop(self) -> None:
        for fwd in self.forwarders.values():
            fwd.stop()
        for fwd in self.forwarders.values():
            fwd.join(timeout=30)
        self.decode_probe.close()
        self.queue.close()

    def apply_config(self, config: Config) -> None:
        self.protector.configure(config)
        self.config = config
        self._start_forwarders()

    def wake(self, destination: str | None = None) -> None:
        if destination is not None and destination not in self.forwarders:
            self._start_forwarders()
        for name, fwd in self.forwarders.items():
            if destination is None or name == destination:
                fwd.wake.set()

    def _start_forwarders(self) -> None:
        names = set(self.config.destinations) | set(self.queue.counts())  # removed ones keep retrying
        for name in sorted(names):
            dest = self.config.destinations.get(name)
            if dest is not None and dest.kind not in SENDABLE:
                continue  # orthanc_* destinations are for the Orthanc plugin
            if name not in self.forwarders:
                fwd = Forwarder(self, name)
                self.forwarders[name] = fwd
                fwd.start()

    def quarantine_object(self, src: Path, **details) -> Path:
        return quarantine(self.config.gateway.quarantine, None, source=src, **details)

    def release_file(self, rel: str) -> None:
        """Delete a spooled original (and its protected copies) once no job needs it (a SEG /
        RTSTRUCT once no image of its study needs its mask either: Queue.releasable). Spool names
        are unique per receipt, so a new receipt of the same instance never shares this file."""
        self.spool.remove(self.queue.releasable(rel))

    def sweep_lesion_sources(self, now: float | None = None) -> None:
        """Release the SEG / RTSTRUCT files kept for images that never came (at most once a minute:
        the studies whose lesion sources passed LESION_KEEP_S since the last sweep)."""
        now = time.time() if now is None else now
        with self._sweep_lock:
            if now - self._swept_at < SWEEP_S:
                return
            since, until = self._swept_until, now - LESION_KEEP_S
            self._swept_at, self._swept_until = now, max(since, until)
        for study in self.queue.lesion_studies(since, until):
            self.spool.remove(self.queue.expired_lesion_sources(study, now))
        # one kept longer because images of its study waited goes when they finish (Queue.releasable)


# --------------------------------------------------------------------------------- child process

def run_child(config: Config, wake, reload_requested, parent_pid: int, log_level: int) -> None:
    """Entry point of the forwarding process (multiprocessing, spawn). `config` is the parent's
    validated configuration; later changes of the file are followed like the parent does."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come through reload_requested
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (Ctrl-C reaches the whole group)
    configure_child(log_level)  # the parent's --log-file / --log-json
    if log_level > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _die_with_parent(parent_pid)
    lock = open(Path(config.gateway.spool) / "forwarder.lock", "a")  # noqa: SIM115 - held for life
    fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a forwarder of an earlier run still finishing
    host = Forwarding(config).start()
    log.debug("forwarding process %d started", os.getpid())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    watcher = ConfigWatcher(config.path, host.apply_config, config.gateway.reload_interval_s, who="forwarding")
    watcher.start()

    def relay():
        while not done.is_set():
            if wake.wait(0.5):
                wake.clear()
                host.wake()
            if reload_requested.is_set():
                reload_requested.clear()
                watcher.reload("SIGHUP")
            if os.getppid() != parent_pid:
                log.error("gateway process gone: forwarding stops")
                done.set()
    threading.Thread(target=relay, name="wake-relay", daemon=True).start()
    done.wait()
    watcher.stop()
    host.stop()


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the gateway process dies
    except OSError:
        pass  # not Linux: the relay thread's parent check stops it within a second
    if os.getppid() != parent_pid:
        os._exit(0)
