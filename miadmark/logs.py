"""Where log lines go: stderr (default), a rotated file (--log-file), as JSON lines (--log-json).

`miadmark gateway` runs a forwarding child process that logs to the same file: both use
SharedRotatingFileHandler, which rotates under an flock on PATH.lock and reopens the file when the
other process has rotated it, so the file is rotated once, whoever writes. The child learns the
settings from the environment it inherits (MIADMARK_LOG_FILE, MIADMARK_LOG_JSON, MIADMARK_LOG_ROTATE).
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
import sys
import threading
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENV_FILE, ENV_JSON, ENV_ROTATE = "MIADMARK_LOG_FILE", "MIADMARK_LOG_JSON", "MIADMARK_LOG_ROTATE"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "process": record.process,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class OneLineNetworkErrors(logging.Filter):
    """pynetdicom logs an aborted association (a peer that resets or closes mid-PDU) or a failing handler as an
    error line followed by the exception with its traceback: one line says it, `Message (Type: reason)`. With
    debug logging (-v) the traceback stays."""

    PAIRED = ("Connection closed before the entire PDU was received", "Exception in the handler bound to",
              "Received an invalid DIMSE message", "pydicom.write_dataset() failed")

    def __init__(self) -> None:
        super().__init__()
        self._held = threading.local()  # the error line waiting for its exception, per association thread

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pynetdicom") or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        if not record.exc_info and str(record.msg).startswith(self.PAIRED):
            self._held.line = record.getMessage()
            return False  # said with the exception that follows it
        if record.exc_info:
            from .errors import safe_reason  # `Type: first line`, quoted values masked

            held, self._held.line = getattr(self._held, "line", None), None
            record.msg, record.args = f"{held or 'association error'} ({safe_reason(record.exc_info[1])})", ()
            record.exc_info = record.exc_text = None
        return True


class SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that several processes may share (each line is one O_APPEND write)."""

    def __init__(self, path: str, max_bytes: int, backups: int):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_file = open(path + ".lock", "a")  # noqa: SIM115 - held while the handler lives

    def emit(self, record: logging.LogRecord) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            self._reopen_if_rotated()
            super().emit(record)
            if self.stream is not None:
                self.stream.flush()
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _reopen_if_rotated(self) -> None:
        if self.stream is None:
            return
        try:
            same = os.stat(self.baseFilename).st_ino == os.fstat(self.stream.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self.stream.close()
            self.stream = self._open()

    def close(self) -> None:
        super().close()
        self._lock_file.close()


def configure(level: int, *, log_file: str | None = None, json_lines: bool = False,
              max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
    """Configure the root logger of the main process; children started later follow it."""
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler: logging.Handler = SharedRotatingFileHandler(log_file, max_bytes, backups)
        os.environ[ENV_FILE] = os.path.abspath(log_file)
        os.environ[ENV_ROTATE] = f"{max_bytes}:{backups}"
    else:
        handler = logging.StreamHandler(sys.stderr)
        os.environ.pop(ENV_FILE, None)
        os.environ.pop(ENV_ROTATE, None)
    if json_lines:
        os.environ[ENV_JSON] = "1"
    else:
        os.environ.pop(ENV_JSON, None)
    _install(handler, level, json_lines)


def configure_child(level: int) -> None:
    """The forwarding process: same file, rotation and format as its parent."""
    log_file = os.environ.get(ENV_FILE)
    if log_file:
        max_bytes, backups = (int(v) for v in os.environ.get(ENV_ROTATE, "0:0").split(":"))
        handler: logging.Handler = SharedRotatingFileHandler(log_file, max_bytes, backups)
    else:
        handler = logging.StreamHandler(sys.stderr)
    _install(handler, level, bool(os.environ.get(ENV_JSON)))


def _install(handler: logging.Handler, level: int, json_lines: bool) -> None:
    """Replace the handler installed by an earlier call; like logging.basicConfig, a stderr handler
    is not added where someone else (a test harness) already handles the root logger."""
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(OneLineNetworkErrors())
    handler.miadmark = True
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "miadmark", False)]:
        root.removeHandler(old)
        old.close()
    root.setLevel(level)
    if isinstance(handler, logging.FileHandler) or not root.handlers:
        root.addHandler(handler)
