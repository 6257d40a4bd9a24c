"""The nodes' TLS settings (miadmark.config.TlsConfig) as ssl contexts (dicomnet.tls)."""

from __future__ import annotations

import ssl

from dicomnet import tls as _tls
from miadmark.config import TlsConfig


def server_context(cfg: TlsConfig | None) -> ssl.SSLContext | None:
    if cfg is None:
        return None
    return _tls.server_context(cfg.cert, cfg.key, cfg.ca, cfg.require_client_cert)


def client_context(cfg: TlsConfig | None) -> ssl.SSLContext | None:
    if cfg is None:
        return None
    return _tls.client_context(cfg.cert, cfg.key, cfg.ca)
