"""Destination kinds are registered once (dicomnet.destinations): each kind the configuration knows has
a handler in some way out, and each way out says at start-up which configured destinations it will not
send to, instead of skipping them in silence."""

from __future__ import annotations

import logging

import pytest

from dicomnet.destinations import handlers, register, unserved
from miadmark.cli import main
from miadmark.config import DESTINATION_MODELS, parse_config

MIXED = """\
destinations:
  archive: {ae_title: ARCHIVE, host: 127.0.0.1, port: 1}
  cloud: {stow_url: 'http://127.0.0.1:1/studies'}
  partner: {orthanc_peer: partner}
rules:
  - {send_to: [archive], action: pass}
"""


def _load_every_adapter() -> None:
    import cohort_release.sink  # noqa: F401 - each registers its handlers on import
    import dicom_node.transports  # noqa: F401
    import orthanc_plugin.kinds  # noqa: F401


def test_every_configured_kind_has_a_handler_somewhere_and_each_adapter_its_own():
    _load_every_adapter()
    served = {kind for adapter in ("gateway", "orthanc", "release") for kind in handlers(adapter)}
    assert served == set(DESTINATION_MODELS)
    assert set(handlers("gateway")) == {"dimse", "stow"}
    assert set(handlers("orthanc")) == {"orthanc_modality", "orthanc_peer", "orthanc_dicomweb"}
    assert set(handlers("release")) == {"stow"}


def test_a_kind_is_registered_once_and_only_a_known_one():
    with pytest.raises(ValueError, match="unknown destination kind"):
        register("gateway", "ftp", object())
    _load_every_adapter()
    with pytest.raises(ValueError, match="already has a handler"):
        register("gateway", "dimse", object())


def test_each_adapter_names_what_it_does_not_send_to(tmp_path):
    _load_every_adapter()
    cfg = parse_config(MIXED, base=tmp_path)
    assert set(unserved("gateway", cfg.destinations)) == {"partner"}
    assert set(unserved("orthanc", cfg.destinations)) == {"archive", "cloud"}
    assert set(unserved("release", cfg.destinations)) == {"archive", "partner"}


def test_the_gateway_says_at_start_up_which_destination_it_does_not_serve(tmp_path, caplog, monkeypatch):
    from dicom_node import gateway as gateway_module

    class Started(Exception):
        pass

    def refuse_to_start(self, *args, **kwargs):  # the check under test runs before the listener starts
        raise Started

    monkeypatch.setattr(gateway_module.Gateway, "__init__", refuse_to_start)
    config = tmp_path / "mixed.yaml"
    config.write_text(MIXED)
    with caplog.at_level(logging.WARNING, logger="dicom_node"), pytest.raises(Started):
        main(["gateway", "--config", str(config)])
    lines = [r.getMessage() for r in caplog.records if "not sent by this gateway" in r.getMessage()]
    assert lines == ["destination partner: not sent by this gateway: kind orthanc_peer: the gateway sends only "
                     "to dimse, stow destinations"]


def test_a_release_refuses_a_kind_it_cannot_send_to(tmp_path, capsys, site_keys):
    key, cert = site_keys["hospital_paths"]
    config = tmp_path / "site.yaml"
    config.write_text(MIXED)
    code = main(["release", "--source", "http://127.0.0.1:1/dicom-web", "--dest", "archive", "--config",
                 str(config), "--sign-key", str(key), "--sign-cert", str(cert)])
    assert code == 2
    assert "'archive' of" in capsys.readouterr().err
