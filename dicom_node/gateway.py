"""The protecting gateway: C-STORE SCP -> rules -> durable spool + queue -> forwarders.

Receive path (one pynetdicom association thread each), kept short:
    header parse (no pixel decode) -> miadmark.rules.route(called AE, calling AE, dataset)
    all destinations blocked -> 0x0124 (Refused: not authorized), nothing spooled
    else write the received bytes as they came (event.encoded_dataset) durably (temp, fsync, rename,
    fsync folder), queue one job per allowed destination (SQLite WAL), THEN answer success.
    The spool file is the durable record: its meta holds the calling/called AE titles, and at start
    recover() queues any spooled file that has no queue row (so the queue commit needs no fsync).
Forwarders (one thread per destination) protect and deliver; see dicom_node.forwarder.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path

from pydicom import dcmread
from pynetdicom import evt
from pynetdicom.dsutils import encode_file_meta

from miadmark.config import Config
from miadmark.rules import BLOCK, route

from dicomnet.listener import start_listener, storage_scp_ae
from miadmark.audit import AuditLog
from miadmark.quarantine import quarantine

from .forwarding import Forwarding
from .monitoring.server import monitor_gateway
from .reload import ConfigWatcher
from .spool import Spool
from .studylog import AssociationTally
from .tls import server_context
from .transports import SENDABLE
from .transport import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, REFUSED_NOT_AUTHORIZED, SUCCESS
from dicomnet.queue import NewJob, Queue

log = logging.getLogger("dicom_node.gateway")


def spool_bytes(event, calling: str, called: str) -> bytes:
    """The instance as received (no decode/encode), in a DICOM file whose meta also records the
    calling and called AE titles (0002,0017)/(0002,0018), so the spool file alone can be re-routed."""
    meta = event.file_meta
    meta.SendingApplicationEntityTitle = calling or "UNKNOWN"
    meta.ReceivingApplicationEntityTitle = called or "UNKNOWN"
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + event.encoded_dataset(include_meta=False)


class Gateway:
    """forward="thread": forwarders run in this process (tests); "process": in a child process
    with its own GIL (what `miadmark gateway` runs); "none": receive and queue only."""

    def __init__(self, config: Config, *, bind: str | None = None, port: int | None = None,
                 forward: str = "thread"):
        if forward not in ("thread", "process", "none"):
            raise ValueError(f"forward must be thread, process or none, not {forward!r}")
        self.config = config
        self.forward = forward
        self.bind = bind or config.gateway.bind
        self.port = config.gateway.port if port is None else port
        self.spool = Spool(config.gateway.spool)
        self.queue = Queue(self.spool.queue_path)
        self.audit = AuditLog(config.gateway.audit)
        self.forwarding: Forwarding | None = None
        self._child = None
        self._child_wake = None
        self._child_reload = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.receipts = AssociationTally(log, "offered")
        self._server = None
        self._watcher: ConfigWatcher | None = None
        self.monitor = None  # the metrics / health / status page server (gateway.metrics_port)
        self.ae = storage_scp_ae(config.gateway.ae_title, max_pdu=config.gateway.max_pdu)
        self._apply_allowlist(config)

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self, *, watch: bool = True) -> "Gateway":
        self.recover()
        self.monitor = monitor_gateway(self)  # before the forwarding child: it inherits the metrics mode
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_RELEASED, self._assoc_done),
                    (evt.EVT_ABORTED, self._assoc_done)]
        gw = self.config.gateway
        try:  # listen first: a port in use stops here, naming it, before any child process exists
            self._server = start_listener(self.ae, self.bind, self.port, handlers,
                                          max_connections=gw.max_associations, tls=server_context(gw.tls),
                                          on_rejected=self._rejected)
        except OSError as exc:
            if self.monitor is not None:
                self.monitor.stop()
            raise OSError(exc.errno, f"DICOM port {self.bind}:{self.port}: {exc.strerror}") from None
        self.port = self._server.server_address[1]
        if self.forward == "thread":
            self.forwarding = Forwarding(self.config).start()
        elif self.forward == "process":
            self._spawn_forwarder()
        if watch and self.config.path is not None:
            self._watcher = ConfigWatcher(self.config.path, self.apply_config, self.config.gateway.reload_interval_s)
            self._watcher.start()
        pending = sum(c.get("pending", 0) for c in self.queue.counts().values())
        log.info("gateway %s listening on %s:%d; %d destination(s), %d rule(s), %d instance(s) pending from before",
                 self.config.gateway.ae_title, self.bind, self.port, len(self.config.destinations),
                 len(self.config.rules), pending)
        return self

    def _spawn_forwarder(self) -> None:
        import multiprocessing

        from .forwarding import run_child
        if self.config.path is None:
            raise ValueError("forward='process' needs a configuration loaded from a file")
        ctx = multiprocessing.get_context("spawn")
        if self._child_wake is None:
            self._child_wake, self._child_reload = ctx.Event(), ctx.Event()
        self._child = ctx.Process(target=run_child, name="miadmark-forward", daemon=False,
                                  args=(self.config, self._child_wake, self._child_reload, os.getpid(),
                                        logging.getLogger().getEffectiveLevel()))
        self._child.start()
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="forwarder-supervisor", daemon=True)
            self._supervisor.start()

    def _supervise(self) -> None:
        """Restart the forwarding process if it dies (it should not; a crash must not stop delivery)."""
        while not self._stopping.wait(1.0):
            child = self._child
            if child is not None and not child.is_alive() and not self._stopping.is_set():
                log.error("forwarding process exited (code %s); restarting it", child.exitcode)
                if self._stopping.wait(2.0):
                    break
                self._spawn_forwarder()

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher:
            self._watcher.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.forwarding is not None:
            self.forwarding.stop()
        if self._child is not None:
            self._child.terminate()  # SIGTERM: the forwarder finishes its current instance
            self._child.join(45)
            if self._child.is_alive():
                self._child.kill()
            self._child = None
        self.queue.close()
        if self.monitor is not None:
            self.monitor.stop()

    def reload(self, reason: str = "SIGHUP") -> bool:
        if self._child_reload is not None:
            self._child_reload.set()  # the forwarding process reloads too (no signal: no startup race)
        if self._watcher is None:
            return False
        return self._watcher.reload(reason)

    def apply_config(self, config: Config) -> None:
        old = self.config.gateway
        for name in ("ae_title", "bind", "port", "spool", "audit"):
            if getattr(old, name) != getattr(config.gateway, name):
                log.warning("gateway.%s changed: takes effect at the next restart", name)
        self._apply_allowlist(config)
        self.config = config
        if self.forwarding is not None:
            self.forwarding.apply_config(config)

    def _apply_allowlist(self, config: Config) -> None:
        allow = config.gateway.allow_calling
        self.ae.require_calling_aet = list(allow) if allow else []

    def _wake(self, destinations) -> None:
        if self.forwarding is not None:
            for d in destinations:
                self.forwarding.wake(d)
        elif self._child_wake is not None:
            self._child_wake.set()

    # ----------------------------------------------------------------------------- receive path
    def handle_store(self, event) -> int:
        cfg = self.config
        assoc = event.assoc
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        calling = str(assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        data = spool_bytes(event, calling, called)
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any unreadable header
            log.warning("%s from %s: unreadable header (%s), refused", sop_uid, calling, type(exc).__name__)
            self.audit.write("refused", sop_instance_uid=sop_uid, calling_ae=calling, called_ae=called,
                             reason=f"unreadable header: {type(exc).__name__}")
            return CANNOT_UNDERSTAND
        decisions = route(cfg, ds, called_ae=called, calling_ae=calling)
        jobs, blocked = [], []
        for d in decisions:
            dest = cfg.destinations.get(d.destinations[0]) if d.destinations else None
            if d.action == BLOCK or dest is None or dest.kind not in SENDABLE:
                blocked.append(d)
            else:
                jobs.append(NewJob.of(d))
        base = {"sop_instance_uid": sop_uid, "study_instance_uid": study, "calling_ae": calling, "called_ae": called}
        for d in blocked:
            self.audit.write("blocked", **base, destination=d.destinations[0] if d.destinations else None,
                             rule=d.rule_label, reason=d.reason)
        if not jobs:
            self.receipts.count(assoc, study, "refused by the rules", calling)
            log.debug("%s blocked: %s", sop_uid, blocked[0].reason if blocked else "")
            return REFUSED_NOT_AUTHORIZED
        try:
            rel = self.spool.store(data, sop_uid)
            self.queue.add(file=rel, sop_uid=sop_uid, sop_class=str(event.request.AffectedSOPClassUID),
                           transfer_syntax=str(event.context.transfer_syntax), study_uid=study,
                           series_uid=series, calling_ae=calling, called_ae=called, jobs=jobs,
                           settle_s=self.config.gateway.study_settle_s)
        except Exception as exc:  # noqa: BLE001 - disk full, database locked: tell the sender to retry
            log.error("%s from %s: cannot spool (%s: %s), answered failure", sop_uid, calling,
                      type(exc).__name__, exc)
            self.receipts.count(assoc, study, "not spooled", calling)
            return OUT_OF_RESOURCES
        self.audit.write("received", **base, queued=[{"destination": j.destination, "action": j.action,
                                                      "rule": j.rule} for j in jobs])
        self.receipts.count(assoc, study, "queued", calling)
        self._wake({j.destination for j in jobs})
        return SUCCESS

    def recover(self) -> int:
        """Queue spooled instances that have no queue entry (a crash or power loss between the
        durable file write and the queue commit). Their AE titles are in the file meta."""
        for folder in (self.spool.objects, self.spool.protected):
            for part in folder.glob(".*.part"):  # a write cut short: never acknowledged
                part.unlink(missing_ok=True)
        self.queue.purge(older_than_s=7 * 86400)
        known = self.queue.files()
        recovered = 0
        for path in sorted(self.spool.objects.glob("*.dcm")):
            rel = f"objects/{path.name}"
            if rel in known:
                self.release_file(rel)  # delivered just before a crash: remove it now
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
                meta = ds.file_meta
                called = str(meta.get("ReceivingApplicationEntityTitle", "")).strip()
                calling = str(meta.get("SendingApplicationEntityTitle", "")).strip()
                jobs = [NewJob.of(d) for d in route(self.config, ds, called_ae=called, calling_ae=calling)
                        if d.action != BLOCK and d.destinations
                        and self.config.destinations[d.destinations[0]].kind in SENDABLE]
                if jobs:
                    self.queue.add(file=rel, sop_uid=str(meta.MediaStorageSOPInstanceUID),
                                   sop_class=str(meta.MediaStorageSOPClassUID),
                                   transfer_syntax=str(meta.TransferSyntaxUID), study_uid=str(ds.StudyInstanceUID),
                                   series_uid=str(ds.SeriesInstanceUID), calling_ae=calling, called_ae=called,
                                   jobs=jobs, durable=True)
                    recovered += 1
                else:
                    log.warning("spooled %s has no queue entry and the current rules send it nowhere; removed",
                                path.name)
                    path.unlink()
            except Exception as exc:  # noqa: BLE001 - keep it out of the way, with its reason
                try:
                    self.quarantine_object(path, reason=f"spooled but unreadable at recovery: {type(exc).__name__}")
                except OSError as qexc:  # not safely in quarantine: it stays in the spool for the next start
                    log.error("spooled %s unreadable and cannot be quarantined (%s): kept", path.name,
                              qexc.strerror or type(qexc).__name__)
                    continue
                path.unlink(missing_ok=True)
        if recovered:
            log.info("recovered %d spooled instance(s) that had no queue entry", recovered)
        return recovered

    def _assoc_done(self, event) -> None:
        self.receipts.flush(event.assoc)

    def _rejected(self, calling: str, peer: str, reason: str) -> None:
        self.audit.write("association_rejected", node="gateway", calling_ae=calling, peer=peer, reason=reason)

    # ----------------------------------------------------------------------------------- helpers
    def quarantine_object(self, src: Path, **details) -> Path:
        return quarantine(self.config.gateway.quarantine, None, source=src, **details)

    def release_file(self, rel: str) -> None:
        self.spool.remove(self.queue.releasable(rel))

    @property
    def forwarders(self) -> dict:
        return self.forwarding.forwarders if self.forwarding is not None else {}
