"""The nodes' TLS settings (miadmark.config.TlsConfig) as ssl contexts (dicomnet.tls)."""

from __future__ import annotations

import ssl

from dicomnet import tls as _tls
from miadmark.config import ConfigError, TlsConfig


def server_context(cfg: TlsConfig | None) -> ssl.SSLContext | None:
    if cfg is None:
        return None
    if cfg.cert is None:
        raise ConfigError("a TLS listener needs tls.cert and tls.key")
    return _tls.server_context(cfg.cert, cfg.key, cfg.ca, cfg.require_client_cert)


def client_context(cfg: TlsConfig | None) -> ssl.SSLContext | None:
    if cfg is None:
        return None
    return _tls.client_context(cfg.cert, cfg.key, cfg.ca)
