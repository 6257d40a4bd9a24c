"""The receiving node: a C-STORE SCP that applies the core receive policy (miadmark.receive_policy).

    stored at <store>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm (original UIDs),
    durably (temp, fsync, rename, fsync folder; 0600 in 0700 folders) before success is answered.

Answers:
    0x0000  stored, or the identical instance was already stored (a resend is harmless)
    0x0110  refused and quarantined: cannot open, plain refused, conflict with a stored original. ONE
            generic status; its Error Comment (0000,0902) names a value-free category (`conflict`,
            `plain refused`, `not opened`: one for every protected instance that does not open, so no
            padding or signature oracle; receive_policy.Outcome.peer_reason); the full reason is local.
            A sender classifies it as permanent (dicomnet.outcome): no retry.
    0xA700  the store or the quarantine could not be written (disk full, ...): transient, the sender
            retries; nothing acknowledged is lost.
Only callers in receiver.allow_calling may associate (when set); plain instances are stored only from
those (receiver.plain unset) or when receiver.plain is "store".
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import evt

from dicomnet.listener import start_listener, storage_scp_ae
from miadmark.audit import AuditLog
from miadmark.config import Config, ConfigError, ReceiverConfig
from miadmark.private import private_dir, write_private
from miadmark.quarantine import quarantine
from miadmark.receive_policy import DUPLICATE, QUARANTINE, Outcome, ReceivePolicy

from .monitoring.server import monitor_receiver
from .studylog import AssociationTally
from .tls import server_context
from .transport import OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS

log = logging.getLogger("dicom_node.receiver")


class Receiver:
    def __init__(self, config: Config, *, bind: str | None = None, port: int | None = None):
        if config.receiver is None:
            raise ConfigError("no receiver section in the configuration", path=config.path)
        rx: ReceiverConfig = config.receiver
        if rx.store is None:
            raise ConfigError("receiver.store is required to run the receiving node", path=config.path)
        self.rx = rx
        self.bind = bind or rx.bind
        self.port = rx.port if port is None else port
        self.policy = ReceivePolicy.from_config(rx)
        if self.policy.keys_error is not None:
            raise ConfigError(f"receiver keys: {self.policy.keys_error}", path=config.path)
        if self.policy.trust is None:
            log.warning("receiver.trust not set: records signed by ANY signer are accepted")
        self.store = private_dir(rx.store)
        self.audit = AuditLog(rx.audit)
        self.tally = AssociationTally(log, "received")
        self.ae = storage_scp_ae(rx.ae_title, max_pdu=rx.max_pdu, require_calling=rx.allow_calling)
        self._store_lock = threading.Lock()
        self._server = None
        self.monitor = None  # the metrics / health / status page server (receiver.metrics_port)

    def start(self) -> "Receiver":
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_RELEASED, self._assoc_done),
                    (evt.EVT_ABORTED, self._assoc_done)]
        try:
            self._server = start_listener(self.ae, self.bind, self.port, handlers,
                                          max_connections=self.rx.max_associations, tls=server_context(self.rx.tls),
                                          on_rejected=self._rejected)
        except OSError as exc:
            raise OSError(exc.errno, f"DICOM port {self.bind}:{self.port}: {exc.strerror}") from None
        self.port = self._server.server_address[1]
        self.monitor = monitor_receiver(self)
        log.info("receiver %s listening on %s:%d; %d key(s), plain instances %s, store %s", self.rx.ae_title,
                 self.bind, self.port, len(self.policy.keyring),
                 "stored" if self.policy.plain == "store" else "refused", self.rx.store)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def path_of(self, uids) -> Path:
        return self.store / uids[0] / uids[1] / f"{uids[2]}.dcm"

    def _stored(self, uids) -> bytes | None:
        try:
            return self.path_of(uids).read_bytes()
        except FileNotFoundError:
            return None

    def handle_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        data = event.encoded_dataset(include_meta=True)
        outcome = self.policy.decide(data)  # strip etc. in parallel across associations
        with self._store_lock:  # check-then-write of one instance is one step
            outcome = self.policy.settle(outcome, self._stored(outcome.uids) if outcome.uids else None)
            try:
                path = write_private(outcome.data, self.path_of(outcome.uids)) if outcome.data is not None else None
            except OSError as exc:  # disk full, read-only store: the sender keeps it and retries
                log.error("%s from %s: cannot store (%s): answered out of resources", outcome.received_uid,
                          calling, exc.strerror or type(exc).__name__)
                self.audit.write("not_stored", sop_instance_uid=outcome.received_uid, calling_ae=calling,
                                 reason=f"store not writable: {exc.strerror or type(exc).__name__}")
                return OUT_OF_RESOURCES
        if outcome.action == QUARANTINE:
            return self._quarantine(event, data, outcome, calling)
        fields = {"sop_instance_uid": outcome.uids[2], "received_sop_instance_uid": outcome.received_uid,
                  "study_instance_uid": outcome.uids[0], "calling_ae": calling, "stripped": outcome.stripped}
        if outcome.action == DUPLICATE:
            self.audit.write(outcome.event, **fields, path=str(self.path_of(outcome.uids)))
            self.tally.count(event.assoc, outcome.uids[0], "duplicate", calling)
        else:
            self.audit.write(outcome.event, **fields, path=str(path))
            self.tally.count(event.assoc, outcome.uids[0], "stripped" if outcome.stripped else "plain", calling)
        return SUCCESS

    def _quarantine(self, event, data: bytes, outcome: Outcome, calling: str) -> int | Dataset:
        try:
            qpath = quarantine(self.rx.quarantine, data, reason=outcome.reason, sop_uid=outcome.received_uid,
                               calling_ae=calling)
        except OSError as exc:  # not safely kept: the sender must keep it and retry
            log.error("cannot quarantine %s: %s: answered out of resources", outcome.received_uid,
                      exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self.audit.write(outcome.event, sop_instance_uid=outcome.received_uid, calling_ae=calling,
                         reason=outcome.reason, quarantine=str(qpath))
        log.warning("%s from %s quarantined: %s", outcome.received_uid, calling, outcome.reason)
        self.tally.count(event.assoc, "(not stored)", "quarantined", calling)
        answer = Dataset()
        answer.Status = PROCESSING_FAILURE
        answer.ErrorComment = outcome.peer_reason  # what the sending site records with its dead letter
        return answer

    def _assoc_done(self, event) -> None:
        self.tally.flush(event.assoc)

    def _rejected(self, calling: str, peer: str, reason: str) -> None:
        self.audit.write("association_rejected", node="receiver", calling_ae=calling, peer=peer, reason=reason)
