"""The C-STORE SCP both nodes listen with, hardened against a hostile or careless peer.

- Every PDU read is bounded: before the association is accepted by PRE_ASSOCIATION_MAX (an
  A-ASSOCIATE-RQ is a few KB), after it by the maximum PDU length we advertised (DEFAULT_MAX_PDU
  unless configured). A header declaring more closes the connection before anything is allocated.
- At most `max_connections` connections at once (more are closed at accept); a connection that sends
  no A-ASSOCIATE-RQ within acse_timeout (10 s) is closed, an idle association after network_timeout.
- Transfer syntax: pynetdicom's acceptor takes the first of ITS OWN list that the sender proposes, so
  the list is ordered explicit first, Implicit VR Little Endian last: a sender proposing both keeps
  the VRs of its private elements (PS3.5 7.1: implicit VR loses them for private tags).
- TLS (PS3.15 B.1): the handshake runs in the association's thread, never in the accept loop.
- Every rejected association request is one log line naming the calling AE title, the peer address and
  the reason (no traceback), and is passed to the node's `on_rejected` (its audit record and metric).
"""

from __future__ import annotations

import logging
import ssl
import threading

from collections.abc import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from .dimse import set_nodelay

log = logging.getLogger(__name__)

DEFAULT_MAX_PDU = 4 * 1024 * 1024  # what we advertise (and accept) when the configuration says 0
PRE_ASSOCIATION_MAX = 256 * 1024  # an A-ASSOCIATE-RQ with 128 contexts x 19 syntaxes is ~70 KB
DEFAULT_MAX_CONNECTIONS = 32

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
# Explicit first; lossless before lossy (a sender offering both keeps its pixels); implicit last.
ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in [
    EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.107",
    IMPLICIT_LE,
] if ts in ALL_TRANSFER_SYNTAXES]


class PduTooLarge(OSError):
    pass


class BoundedSocket(AssociationSocket):
    """An AssociationSocket whose reads are bounded by what the association may carry."""

    def limit(self) -> int:
        assoc = self.assoc
        if not assoc.is_established:
            return PRE_ASSOCIATION_MAX
        return (assoc.acceptor.maximum_length or DEFAULT_MAX_PDU) + 6  # + a PDU header's slack

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit():
            log.warning("a peer declared a %d-byte PDU (limit %d): connection closed", nr_bytes, self.limit())
            raise PduTooLarge(f"PDU of {nr_bytes} bytes over the limit")
        # One recv_into per available chunk into a buffer of the (bounded) declared size: pynetdicom's
        # 4 KB reads cost 130 GIL round trips for one CT slice.
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        try:
            while nr_read < nr_bytes:
                got = self.socket.recv_into(view[nr_read:], nr_bytes - nr_read)
                if not got:
                    return buf[:nr_read]  # connection closed: what we have, as pynetdicom does
                nr_read += got
        finally:
            view.release()
        return buf


class _Handler(RequestHandler):
    def _create_association(self):
        assoc = super()._create_association()
        # the socket pynetdicom made for this connection, given bounded reads (no second construction:
        # AssociationSocket() queues the transport-connection event Evt5 as it is made)
        assoc.dul.socket.__class__ = BoundedSocket
        return assoc


class BoundedServer(ThreadedAssociationServer):
    """ThreadedAssociationServer with bounded reads, a connection cap and TLS off the accept loop."""

    max_connections = DEFAULT_MAX_CONNECTIONS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, request_handler=_Handler, **kwargs)

    def get_request(self):
        client_socket, address = self.socket.accept()
        if self.ssl_context:  # handshake on first read, in the association's own thread
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return client_socket, address

    def verify_request(self, request, client_address) -> bool:
        if len(self.active_associations) >= self.max_connections:
            log.warning("connection from %s refused: %d associations already open", client_address[0],
                        self.max_connections)
            return False
        return True


def storage_scp_ae(ae_title: str, *, max_pdu: int = 0, require_calling: list[str] | None = None) -> AE:
    """An AE that accepts every storage SOP class in ACCEPTED_TRANSFER_SYNTAXES (not all 45 pynetdicom
    knows: it deep-copies the supported contexts per association, 144 ms for 170 x 45)."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu or DEFAULT_MAX_PDU
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 10  # a connection that sends no association request holds a slot this long at most
    ae.maximum_associations = DEFAULT_MAX_CONNECTIONS
    ae.require_calling_aet = list(require_calling or [])
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, [EXPLICIT_LE, IMPLICIT_LE])
    return ae


def printable(text: str, limit: int = 64) -> str:
    """A peer-supplied string fit for one log line (an AE title is 16 characters; a hostile peer's may not be)."""
    return "".join(c if c.isprintable() else "?" for c in str(text).strip())[:limit]


def rejection(event) -> tuple[str, str, str]:
    """(calling AE title, peer "host:port", reason) of an association request this side rejected."""
    assoc = event.assoc
    calling = printable(assoc.requestor.ae_title)
    peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
    primitive = assoc.acceptor.primitive
    try:
        reason = primitive.reason_str.lower()
    except Exception:  # noqa: BLE001 - no reject primitive recorded: still one line
        reason = "rejected"
    return calling, peer, reason


def rejected_handler(on_rejected: Callable[[str, str, str], None] | None):
    """EVT_REJECTED handler: one log line, then on_rejected(calling, peer, reason) (never raises)."""
    def handle(event) -> None:
        try:
            calling, peer, reason = rejection(event)
            log.warning("association from %r at %s rejected: %s", calling, peer, reason)
            if on_rejected is not None:
                on_rejected(calling, peer, reason)
        except Exception as exc:  # noqa: BLE001 - a record of a refusal must not break the listener
            log.warning("association rejected (not recorded: %s)", type(exc).__name__)
    return handle


def start_listener(ae: AE, bind: str, port: int, handlers: list, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                   tls: ssl.SSLContext | None = None,
                   on_rejected: Callable[[str, str, str], None] | None = None) -> BoundedServer:
    """Serve in a daemon thread; returns the server (server.server_address[1] is the port; shutdown() stops).
    on_rejected(calling AE, peer, reason) is called for each association request rejected."""
    server_class = type("Server", (BoundedServer,), {"max_connections": max_connections})
    ae.maximum_associations = max_connections
    server = ae.make_server((bind, port), ssl_context=tls,
                            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay),
                                          (evt.EVT_REJECTED, rejected_handler(on_rejected)), *handlers],
                            server_class=server_class)
    threading.Thread(target=server.serve_forever, name=f"listener-{ae.ae_title}", daemon=True).start()
    ae._servers.append(server)  # so ae.shutdown() stops it too, as for start_server
    return server
