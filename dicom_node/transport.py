"""pynetdicom plumbing shared by the gateway, the forwarder and the receiver.

pynetdicom never sets TCP_NODELAY: a small PDU (a C-STORE response, the last fragment of a
dataset) then waits for the peer's delayed ACK (~40 ms), which caps one association near 10
instances/s. Every association made here sets it when the connection opens (EVT_CONN_OPEN).
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket

# Send spooled files as they are (no decode/encode round) when given a path.
_config.STORE_SEND_CHUNKED_DATASET = True


def _recv_into(self, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv without pynetdicom's 4096-byte reads.

    pynetdicom reads a PDU 4 KB per recv() call: 130 calls, each releasing and re-taking the GIL,
    for one 526 KB CT slice. In a process that also sends (the gateway) every re-take can wait a
    GIL switch interval behind the other threads. One recv_into per available chunk instead.
    """
    sock = self.socket
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    nr_read = 0
    while nr_read < nr_bytes:
        got = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
        if not got:
            del view
            return buf[:nr_read]  # connection closed: what we have, as pynetdicom does
        nr_read += got
    return buf


AssociationSocket.recv = _recv_into

log = logging.getLogger(__name__)

# C-STORE status codes answered by our SCPs.
SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124  # a `block` rule (or no rule) for this traffic
OUT_OF_RESOURCES = 0xA700  # could not write the spool / queue
PROCESSING_FAILURE = 0x0110  # the receiver's one generic failure status


def set_nodelay(event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # pragma: no cover - a closed socket
        log.debug("TCP_NODELAY not set: %s", exc)


NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, set_nodelay)]


# The common transfer syntaxes an SCP here accepts: uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000,
# HTJ2K, RLE, and the usual video ones. (Not all 45 pynetdicom knows: pynetdicom deep-copies the
# supported contexts for every association, 144 ms of CPU for 170 SOP classes x 45 syntaxes.)
COMMON_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts in {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.107",
}]


def storage_scp_ae(ae_title: str, *, max_pdu: int = 0) -> AE:
    """An AE that accepts every storage SOP class in the common transfer syntaxes."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, COMMON_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:3])
    return ae


def scu_ae(ae_title: str, contexts: list[tuple[str, str]], *, max_pdu: int = 0) -> AE:
    """An AE requesting one presentation context per (SOP class, transfer syntax) pair (<= 128)."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = 60
    ae.dimse_timeout = 120
    ae.acse_timeout = 30
    seen = set()
    for sop_class, ts in contexts:
        if (sop_class, ts) in seen:
            continue
        seen.add((sop_class, ts))
        ae.add_requested_context(sop_class, [ts])
    return ae


def status_ok(status) -> bool:
    """Success or warning (0xB000, 0xB006, 0xB007, 0x0107, 0x0116) counts as delivered."""
    code = getattr(status, "Status", None)
    return code is not None and (code == 0 or (code & 0xF000) == 0xB000 or code in (0x0107, 0x0116))


def status_text(status) -> str:
    code = getattr(status, "Status", None)
    return "no response (association aborted or timed out)" if code is None else f"status 0x{code:04X}"
