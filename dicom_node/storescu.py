"""A minimal C-STORE sender (one association for many files), used by tests and the benchmark."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from dicomnet.dimse import NODELAY_HANDLERS, scu_ae


def send_files(host: str, port: int, paths: Iterable[str | Path], *, called_ae: str, calling_ae: str = "STORESCU",
               max_pdu: int = 0, tls=None) -> list[int | None]:
    """C-STORE every file as stored (no re-encoding) over ONE association; returns each status
    (None when no response came); tls: an ssl.SSLContext for DICOM TLS. Raises ConnectionError when
    no association could be made."""
    paths = [Path(p) for p in paths]
    metas = [read_file_meta_info(p) for p in paths]
    contexts = list(dict.fromkeys((str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas))
    if len(contexts) > 128:
        raise ValueError("more than 128 (SOP class, transfer syntax) pairs: split the files")
    ae = scu_ae(calling_ae, contexts, max_pdu=max_pdu, timeout_s=120.0)
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=NODELAY_HANDLERS, max_pdu=max_pdu,
                         tls_args=(tls, host) if tls is not None else None)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {called_ae}@{host}:{port}"
                              + (" (rejected)" if assoc.is_rejected else ""))
    out: list[int | None] = []
    try:
        for p in paths:
            status = assoc.send_c_store(p)
            out.append(getattr(status, "Status", None))
    finally:
        if assoc.is_established:
            assoc.release()
    return out
