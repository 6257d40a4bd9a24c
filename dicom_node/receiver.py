"""The receiving node: a C-STORE SCP that strips protected instances with its keys.

    protected -> miadmark.protect.strip(keyring, trust) -> the bit-exact original
    plain     -> stored as received (receiver.plain: store) or refused (receiver.plain: refuse)
    stored at <store>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm (original UIDs),
    durably (temp, fsync, rename, fsync folder) before success is answered.

Anything that cannot be opened (no key, wrong key, tampered, untrusted signer, bad UIDs, ...)
is quarantined with a reason file and answered with ONE generic failure status (0x0110), so the
network peer learns nothing about why (no padding or signature oracle); the reason is local.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from pydicom import dcmread
from pynetdicom import evt

from miadmark.config import Config, ConfigError, ReceiverConfig
from miadmark.dicomio import dataset_from_bytes, dataset_to_bytes, write_atomic
from miadmark.errors import InvalidInputError, MiadmarkError
from miadmark.keys import load_certificates, load_identity, read_passphrase

from .audit import AuditLog
from .monitoring.server import monitor_receiver
from .quarantine import quarantine
from .spool import safe_uid
from .studylog import AssociationTally
from .transport import PROCESSING_FAILURE, SUCCESS, set_nodelay, storage_scp_ae

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
        self.keyring = [load_identity(k.key, k.cert, read_passphrase(k.passphrase_file)) for k in rx.keys]
        self.trust = load_certificates(rx.trust) if rx.trust is not None else None
        if self.trust is None:
            log.warning("receiver.trust not set: records signed by ANY signer are accepted")
        self.audit = AuditLog(rx.audit)
        self.tally = AssociationTally(log, "received")
        self.ae = storage_scp_ae(rx.ae_title, max_pdu=rx.max_pdu)
        self.ae.require_calling_aet = list(rx.allow_calling or [])
        self._server = None
        self.monitor = None  # the metrics / health / status page server (receiver.metrics_port)

    def start(self) -> "Receiver":
        handlers = [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_STORE, self.handle_store),
                    (evt.EVT_RELEASED, self._assoc_done), (evt.EVT_ABORTED, self._assoc_done)]
        try:
            self._server = self.ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise OSError(exc.errno, f"DICOM port {self.bind}:{self.port}: {exc.strerror}") from None
        self.port = self._server.server_address[1]
        self.monitor = monitor_receiver(self)
        log.info("receiver %s listening on %s:%d; %d key(s), store %s", self.rx.ae_title, self.bind, self.port,
                 len(self.keyring), self.rx.store)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def handle_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        request_uid = str(event.request.AffectedSOPInstanceUID)
        data = event.encoded_dataset(include_meta=True)
        stripped = False
        try:
            ds = _header(data)
            if "EncryptedAttributesSequence" in ds:
                from miadmark.protect import strip
                original = strip(dataset_from_bytes(data), keyring=self.keyring, trust=self.trust)
                out, stripped = dataset_to_bytes(original), True
            elif self.rx.plain == "refuse":
                raise MiadmarkError("plain (unprotected) instance refused: receiver.plain is 'refuse'")
            else:
                original, out = ds, data
            uids = [safe_uid(getattr(original, k, "")) for k in
                    ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            if not all(uids):
                raise MiadmarkError("missing or malformed Study/Series/SOP Instance UID")
            path = write_atomic(out, Path(self.rx.store) / uids[0] / uids[1] / f"{uids[2]}.dcm")
        except Exception as exc:  # noqa: BLE001 - every failure is quarantined, none is dropped
            return self._fail(event, data, request_uid, calling, exc)
        self.audit.write("stored", sop_instance_uid=uids[2], received_sop_instance_uid=request_uid,
                         study_instance_uid=uids[0], calling_ae=calling, stripped=stripped, path=str(path))
        self.tally.count(event.assoc, uids[0], "stripped" if stripped else "plain", calling)
        return SUCCESS

    def _fail(self, event, data: bytes, sop_uid: str, calling: str, exc: Exception) -> int:
        if isinstance(exc, MiadmarkError):
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = f"internal error {type(exc).__name__}: {exc}"
            log.exception("receiver: unexpected error on %s", sop_uid)
        try:
            qpath = quarantine(self.rx.quarantine, data, reason=reason, sop_uid=sop_uid, calling_ae=calling,
                               error=type(exc).__name__)
        except OSError as qexc:
            qpath = None
            log.error("cannot quarantine %s: %s", sop_uid, qexc)
        self.audit.write("quarantined", sop_instance_uid=sop_uid, calling_ae=calling, reason=reason,
                         quarantine=str(qpath) if qpath else None)
        log.warning("%s from %s quarantined: %s", sop_uid, calling, reason)
        self.tally.count(event.assoc, "(not opened)", "quarantined", calling)
        return PROCESSING_FAILURE

    def _assoc_done(self, event) -> None:
        self.tally.flush(event.assoc)


def _header(data: bytes):
    """Everything before Pixel Data (the record and the UIDs come first); no pixel copy."""
    try:
        return dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise InvalidInputError(f"unreadable DICOM ({type(exc).__name__})") from None
