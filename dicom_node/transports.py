"""The gateway's transports, registered by destination kind (dicomnet.destinations, as mercure's
@handler_for): a new transport is one class here (and one destination model in miadmark.config). The
sending itself is dicomnet's, shared with the Orthanc plugin.

A link is opened per batch: `fits(pair)` says whether it can carry a (SOP class, transfer syntax),
`send(items, on_result)` returns one dicomnet Outcome per item (or raises Unreachable) and calls
on_result(index, outcome) for each as soon as it is known, `lingers` whether the
forwarder keeps it open for more work, `close()` ends it. Opening raises Unreachable.
"""

from __future__ import annotations

from pathlib import Path

import requests

from dicomnet.destinations import handler_for, handlers
from dicomnet.dimse import accepted_pairs, open_association, release, scu_ae, send_on
from dicomnet.outcome import Outcome
from dicomnet.stow import StowTarget, post_instances

from .tls import client_context


@handler_for("gateway", "dimse")
class DimseLink:
    """One association to a DICOM destination, proposing the batch's (SOP class, transfer syntax) pairs."""

    lingers = True

    def __init__(self, dest, gateway_cfg, items):
        pairs = list(dict.fromkeys((i.sop_class, i.transfer_syntax) for i in items))
        ae = scu_ae(dest.calling_ae or gateway_cfg.ae_title, pairs, max_pdu=gateway_cfg.max_pdu,
                    timeout_s=dest.timeout_s)
        tls = dest.tls
        self.assoc = open_association(ae, dest.host, dest.port, dest.ae_title, max_pdu=gateway_cfg.max_pdu,
                                      tls=client_context(tls), server_hostname=tls.server_hostname if tls else None)
        self._pairs = accepted_pairs(self.assoc)

    @property
    def is_open(self) -> bool:
        return self.assoc.is_established

    def fits(self, pair: tuple[str, str]) -> bool:
        return pair in self._pairs

    def send(self, items, on_result=None) -> list[Outcome]:
        return send_on(self.assoc, [i.path for i in items], on_result=on_result)  # the files as they are

    def close(self) -> None:
        release(self.assoc)


@handler_for("gateway", "stow")
class StowLink:
    """One STOW-RS POST (multipart/related; type="application/dicom") per batch."""

    lingers = False
    is_open = True

    def __init__(self, dest, gateway_cfg, items):
        cert = (str(dest.client_cert), str(dest.client_key)) if dest.client_key else \
            (str(dest.client_cert) if dest.client_cert else None)
        self.target = StowTarget(dest.stow_url, headers=dict(dest.headers), timeout_s=dest.timeout_s,
                                 verify=str(dest.verify) if isinstance(dest.verify, Path) else dest.verify, cert=cert)
        self.session = requests.Session()

    def fits(self, pair: tuple[str, str]) -> bool:
        return True

    def send(self, items, on_result=None) -> list[Outcome]:
        results = post_instances(self.target, [(i.sop_uid, i.path.read_bytes()) for i in items], session=self.session)
        for index, outcome in enumerate(results if on_result is not None else ()):  # one answer for all
            on_result(index, outcome)
        return results

    def close(self) -> None:
        self.session.close()


TRANSPORTS = handlers("gateway")  # kind -> link class
SENDABLE = tuple(TRANSPORTS)


def send_stow(dest, items) -> list[Outcome]:
    """One STOW-RS POST for these items (tests, tools)."""
    link = StowLink(dest, None, items)
    try:
        return link.send(items)
    finally:
        link.close()
