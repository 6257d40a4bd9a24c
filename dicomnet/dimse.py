"""C-STORE sending for both adapters: one association per batch, TCP_NODELAY, quick ACKs, statuses classified.

pynetdicom never sets TCP_NODELAY: a small PDU (a C-STORE response, the last fragment of a dataset)
then waits for the peer's delayed ACK (~40 ms), which caps one association near 10 instances/s.
Every association made here sets it when the connection opens (EVT_CONN_OPEN).
The same stall the other way round: a peer that leaves Nagle on (Orthanc 1.10 / DCMTK answer a
C-STORE in two writes, a 12-byte PDU header and the rest) holds its second write until our ACK
of the first, and Linux delays that ACK ~40 ms: measured 51 ms per C-STORE to a loopback Orthanc,
the whole of its time. So the socket also ACKs at once (TCP_QUICKACK, Linux; Linux drops it
again after a while, so it is set before every read).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt

from .outcome import Outcome, Unreachable, c_store_outcome

# Send spooled files as they are (no decode/encode round) when given a path.
_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2: odd IDs 1..255)


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def set_nodelay(event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket, and its ACKs sent at once."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ack_at_once(event.assoc.dul.socket)
    except (AttributeError, OSError) as exc:  # pragma: no cover - a closed socket
        log.debug("TCP_NODELAY not set: %s", exc)


def ack_at_once(assoc_socket) -> None:
    """TCP_QUICKACK before every read of a pynetdicom AssociationSocket: an ACK the kernel is holding
    back goes out now, so a Nagle-bound peer sends the rest of its PDU without waiting ~40 ms."""
    recv = getattr(assoc_socket, "recv", None)
    if QUICKACK is None or recv is None:
        return

    def recv_acked(nr_bytes: int):
        try:
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except (AttributeError, OSError):  # closed meanwhile: the read says so
            pass
        return recv(nr_bytes)

    assoc_socket.recv = recv_acked


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, set_nodelay)]


def scu_ae(ae_title: str, contexts: Iterable[tuple[str, str | list[str]]], *, max_pdu: int = 0,
           timeout_s: float = 60.0) -> AE:
    """An AE requesting one presentation context per (SOP class, transfer syntax(es)) (<= 128)."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = timeout_s
    ae.dimse_timeout = timeout_s  # a peer silent this long mid-transfer is given up on (transient)
    ae.acse_timeout = min(timeout_s, 30.0)
    seen = set()
    for sop_class, syntaxes in contexts:
        syntaxes = [syntaxes] if isinstance(syntaxes, str) else list(syntaxes)
        key = (sop_class, tuple(syntaxes))
        if key in seen or len(seen) >= MAX_CONTEXTS:
            continue
        seen.add(key)
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def open_association(ae: AE, host: str, port: int, called_ae: str, *, max_pdu: int = 0,
                     tls: ssl.SSLContext | None = None, server_hostname: str | None = None):
    """An established association, or Unreachable naming the peer and why."""
    tls_args = (tls, server_hostname or host) if tls is not None else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=NODELAY_HANDLERS, max_pdu=max_pdu,
                             tls_args=tls_args)
    except (OSError, ValueError) as exc:
        raise Unreachable(f"association to {called_ae}@{host}:{port}: {type(exc).__name__}") from None
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else connect_failure(host, port)
        raise Unreachable(f"association to {called_ae}@{host}:{port} {why or 'aborted or timed out'}",
                          association_refused=why is None or assoc.is_rejected)
    return assoc


def connect_failure(host: str, port: int) -> str | None:
    """Why a TCP connection cannot be made ("could not connect: connection refused"), None if it can:
    pynetdicom reports a refused connection as an aborted association, which sends operators the wrong way."""
    import socket
    try:
        with socket.create_connection((host, port), timeout=5):
            return None
    except OSError as exc:
        return f"could not connect: {exc.strerror or type(exc).__name__}".lower()


def accepted_pairs(assoc) -> set[tuple[str, str]]:
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}


def send_on(assoc, items: Iterable[Path | Dataset], *, originator: tuple[str, int] | None = None,
            on_result: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """C-STORE each item (a file as it is, no re-encoding, or a dataset) on an open association.
    Once the association is lost the rest fail as transient (not sent). on_result(index, outcome) is
    called as each answer arrives, so a caller can record a delivery before the next one starts (a
    crash mid-batch then re-sends only what was not yet answered)."""
    results: list[Outcome] = []
    for item in items:
        results.append(_store_one(assoc, item, originator))
        if on_result is not None:
            on_result(len(results) - 1, results[-1])
    return results


def _store_one(assoc, item: Path | Dataset, originator: tuple[str, int] | None) -> Outcome:
    if not assoc.is_established:
        return Outcome(False, "association lost")
    try:
        if originator:
            status = assoc.send_c_store(item, originator_aet=originator[0], originator_id=int(originator[1]))
        else:
            status = assoc.send_c_store(item)
    except (ValueError, AttributeError) as exc:  # no accepted context for it: this object, not the peer
        return Outcome(False, f"not sent: {exc}", permanent=True)
    except OSError as exc:  # the file vanished or the socket broke
        return Outcome(False, f"not sent: {type(exc).__name__}")
    return c_store_outcome(status)


def release(assoc) -> None:
    if assoc is not None and assoc.is_established:
        assoc.release()
