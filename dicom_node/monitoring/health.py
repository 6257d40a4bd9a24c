"""Readiness of a node: ready = listening + queue (or store) writable + keys loaded (+ forwarding alive).

Each check returns (ok, detail); /health answers 200 when all are ok, 503 otherwise, with the checks.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

Check = tuple[bool, str]


def queue_writable(path: Path) -> Check:
    """Take and release the queue's write lock (what a receipt needs), waiting at most 2 s."""
    try:
        con = sqlite3.connect(path, timeout=2, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        finally:
            con.close()
        return True, "ok"
    except sqlite3.Error as exc:
        return False, f"{path.name}: {exc}"


def folder_writable(folder: Path) -> Check:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-"):
            pass
        return True, "ok"
    except OSError as exc:
        return False, f"{folder}: {exc.strerror or exc}"


class GatewayHealth:
    def __init__(self, gateway):
        self.gateway = gateway
        self._keys: Check | None = None

    def keys(self) -> Check:
        """The signing identity loads (checked once: the forwarding process loads its own copy)."""
        if self._keys is None:
            from miadmark import loaded
            ident = self.gateway.config.identity
            if ident is None:
                self._keys = (True, "no identity (pass and block routes only)")
            else:
                try:
                    loaded.identity(ident.key, ident.cert, ident.passphrase_file)
                    self._keys = (True, "ok")
                except Exception as exc:  # noqa: BLE001 - any failure means not ready
                    self._keys = (False, f"identity: {type(exc).__name__}: {exc}")
        return self._keys

    def forwarding(self) -> Check:
        gw = self.gateway
        if gw.forward == "none":
            return True, "off (receive and queue only)"
        child = gw._child
        if child is not None:
            return (True, "ok") if child.is_alive() else (False, f"forwarding process exited ({child.exitcode})")
        if gw.forwarding is not None:
            return True, "ok"
        return False, "not started"

    def __call__(self) -> dict[str, Check]:
        gw = self.gateway
        return {"listening": (True, f"{gw.bind}:{gw.port}") if gw._server is not None else (False, "not listening"),
                "queue_writable": queue_writable(gw.spool.queue_path),
                "keys_loaded": self.keys(),
                "forwarding": self.forwarding()}


class ReceiverHealth:
    def __init__(self, receiver):
        self.receiver = receiver

    def __call__(self) -> dict[str, Check]:
        rx = self.receiver
        listening = (True, f"{rx.bind}:{rx.port}") if rx._server is not None else (False, "not listening")
        keyring = rx.policy.keyring
        keys = (True, f"{len(keyring)} key(s)") if keyring else (False, "no receiver.keys: nothing can be opened")
        return {"listening": listening, "store_writable": folder_writable(Path(rx.rx.store)), "keys_loaded": keys}


def summary(checks: dict[str, Check]) -> tuple[bool, dict]:
    ok = all(c[0] for c in checks.values())
    return ok, {"ready": ok, "pid": os.getpid(),
                "checks": {name: {"ok": c[0], "detail": c[1]} for name, c in checks.items()}}
