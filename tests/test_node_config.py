"""Destinations as one model per kind, rule profiles and TLS settings checked when the file loads (issue 14, §1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from miadmark.config import ConfigError, StowDestination, parse_config

DEST = "destinations:\n  d: {body}\n"


@pytest.mark.parametrize("body, words", [
    ("{ae_title: X, host: h}", "destinations.d.port: Field required"),
    ("{stow_url: 'http://x/studies', orthanc_peer: p}", "exactly one of"),
    ("{stow_url: 'ftp://x'}", "destinations.d.stow_url"),
    ("{ae_title: X, host: h, port: 1, stow_ur: 'http://x'}", "stow_ur: unknown setting"),
    ("{ae_title: X, host: h, port: 1, tls: {cert: c.pem}}", "both cert and key"),
])
def test_a_bad_destination_names_its_field(body, words):
    with pytest.raises(ConfigError) as err:
        parse_config(DEST.format(body=body), check_files=False)
    assert words in str(err.value) and ":2:" in str(err.value)


def test_each_kind_is_its_own_model():
    cfg = parse_config("destinations:\n  a: {ae_title: X, host: h, port: 1}\n  b: {stow_url: 'https://x/studies'}\n"
                       "  c: {orthanc_modality: m}\n")
    assert [d.kind for d in cfg.destinations.values()] == ["dimse", "stow", "orthanc_modality"]
    assert isinstance(cfg.destinations["b"], StowDestination) and cfg.destinations["a"].target == "X@h:1"


def test_a_misspelled_profile_fails_rules_check(tmp_path):
    (tmp_path / "k.pem").write_text("x")
    site = tmp_path / "site.yaml"
    site.write_text("identity: {key: k.pem, cert: k.pem}\n" + DEST.format(body="{ae_title: X, host: h, port: 1}")
                    + "rules:\n  - send_to: [d]\n    action: protect\n    recipients: [k.pem]\n    profile: trasnfer\n")
    run = subprocess.run([sys.executable, "-m", "miadmark.cli", "rules", "check", "--config", str(site)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "unknown profile 'trasnfer'" in run.stderr and "site.yaml:8" in run.stderr


def test_tls_files_are_checked_at_load(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("receiver:\n  quarantine: q/\n  tls: {cert: rx.pem, key: rx.key}\n")
    with pytest.raises(ConfigError, match="receiver.tls.cert: file not found"):
        parse_config(site.read_text(), path=site)
