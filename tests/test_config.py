"""Configuration file: the issue's example loads, paths resolve, bad files name the line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from miadmark.config import ConfigError, load_config, parse_config

EXAMPLE = """\
identity:                          # this site's signing identity
  key: keys/hospital.key.pem
  cert: keys/hospital.cert.pem
gateway:
  ae_title: MIADMARK
  port: 11112
  allow_calling: [PACS, CT1]       # AE titles allowed to send; omitted = any
  spool: spool/                    # durable queue
destinations:
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 11113}
  cloud:    {stow_url: "http://127.0.0.1:8042/dicom-web/studies"}
  archive:  {ae_title: ARCHIVE, host: 127.0.0.1, port: 11114}
rules:                             # first match wins
  - when: {called_ae: RESEARCH}    # called_ae, calling_ae, modality, or any tag keyword: value, glob or /regex/
    send_to: [research]
    action: protect
    recipients: [keys/research.cert.pem]
  - when: {called_ae: ARCHIVE}
    send_to: [archive]
    action: pass
  - action: block                  # everything else
receiver:                          # the receiving node
  ae_title: RESEARCH
  port: 11113
  store: received/                 # clean originals
  quarantine: quarantine/          # what could not be opened, with a reason file beside each
  keys: [{key: keys/research.key.pem, cert: keys/research.cert.pem}]
  trust: [keys/hospital.cert.pem]
"""

KEY_FILES = ["hospital.key.pem", "hospital.cert.pem", "research.key.pem", "research.cert.pem"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    for name in KEY_FILES:
        (tmp_path / "keys" / name).write_text("placeholder")
    path = tmp_path / "site.yaml"
    path.write_text(EXAMPLE)
    return path


def test_issue_example_loads_and_resolves_paths(site: Path):
    cfg = load_config(site)
    base = site.parent
    assert cfg.path == site.resolve()
    assert cfg.identity.key == base / "keys/hospital.key.pem"
    assert cfg.gateway.ae_title == "MIADMARK" and cfg.gateway.port == 11112
    assert cfg.gateway.allow_calling == ["PACS", "CT1"]
    assert cfg.gateway.spool == base / "spool"
    assert cfg.gateway.quarantine == base / "spool" / "quarantine"
    assert cfg.destinations["research"].kind == "dimse"
    assert cfg.destinations["cloud"].kind == "stow"
    assert cfg.destinations["archive"].target == "ARCHIVE@127.0.0.1:11114"
    assert [r.action for r in cfg.rules] == ["protect", "pass", "block"]
    assert cfg.rules[0].recipients == [base / "keys/research.cert.pem"]
    assert cfg.rules[0].line == 14 and cfg.rules[2].line == 21
    assert cfg.receiver.store == base / "received"
    assert cfg.receiver.keys[0].key == base / "keys/research.key.pem"
    assert cfg.receiver.trust == [base / "keys/hospital.cert.pem"]


def test_orthanc_destinations_and_minimal_receiver(tmp_path: Path):
    for name in KEY_FILES:
        (tmp_path / name).write_text("x")
    cfg = parse_config(
        "identity: {key: hospital.key.pem, cert: hospital.cert.pem}\n"
        "destinations:\n"
        "  research: {orthanc_modality: research}\n"
        "  peer: {orthanc_peer: lab}\n"
        "  web: {orthanc_dicomweb: cloud}\n"
        "rules:\n"
        "  - send_to: [research, peer, web]\n"
        "    action: protect\n"
        "    recipients: [research.cert.pem]\n"
        "receiver: {quarantine: q, keys: [{key: research.key.pem, cert: research.cert.pem}]}\n",
        base=tmp_path)
    assert [d.kind for d in cfg.destinations.values()] == ["orthanc_modality", "orthanc_peer", "orthanc_dicomweb"]
    assert cfg.destinations["peer"].target == "lab"
    assert cfg.receiver.store is None and cfg.receiver.trust is None


def _error(text: str, tmp_path: Path, **kw) -> ConfigError:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    return info.value


@pytest.mark.parametrize("edit, line, words", [
    (("action: pass", "action: allow"), 20, "rules[1].action"),
    (("send_to: [archive]", "send_to: [archiv]"), 19, "unknown destination 'archiv'"),
    (("port: 11113}", "port: 99999}"), 10, "destinations.research.port"),
    (("  port: 11112", "  prot: 11112"), 6, "unknown setting"),
    (("when: {called_ae: ARCHIVE}", "when: {PatientNam: X}"), 18, "unknown match key 'PatientNam'"),
    (("when: {called_ae: ARCHIVE}", "when: {called_ae: '/AR(/'}"), 18, "bad regular expression"),
    (("    action: protect\n    recipients: [keys/research.cert.pem]\n", "    action: protect\n"), 14,
     "needs recipients"),
    (("  archive:  {ae_title: ARCHIVE, host: 127.0.0.1, port: 11114}", "  archive:  {ae_title: ARCHIVE}"), 12,
     "destinations.archive.host: Field required"),
    (("  cloud:    {stow_url", "  cloud:    {ae_title: X, stow_url"), 11, "exactly one of"),
    (("recipients: [keys/research.cert.pem]", "recipients: [keys/nobody.cert.pem]"), 17, "file not found"),
    (("allow_calling: [PACS, CT1]", "allow_calling: [PACS, CT1, THIS_NAME_IS_TOO_LONG]"), 7, "allow_calling[2]"),
    (("  - action: block ", "  - action: block\n bad: [\n"), 22, "YAML syntax"),
])
def test_bad_file_names_line_and_reason(site: Path, tmp_path: Path, edit, line, words):
    old, new = edit
    assert old in EXAMPLE
    err = _error(EXAMPLE.replace(old, new, 1), tmp_path)
    assert err.line == line, str(err)
    assert words in str(err), str(err)
    assert str(err).startswith(f"{tmp_path / 'bad.yaml'}:{line}: ")


def test_protect_without_identity_is_refused(site: Path, tmp_path: Path):
    err = _error("gateway:" + EXAMPLE.split("gateway:", 1)[1], tmp_path)
    assert "need an identity" in err.reason


def test_not_a_mapping_and_unreadable(tmp_path: Path):
    assert _error("- a\n- b\n", tmp_path).line == 1
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_check_files_can_be_skipped(tmp_path: Path):
    cfg = parse_config(EXAMPLE, base=tmp_path, check_files=False)
    assert cfg.identity.cert == tmp_path / "keys/hospital.cert.pem"


@pytest.mark.parametrize("profile", ["auto", "fast", "cloak", "plain"])
def test_a_rule_may_name_a_profile_or_auto(site: Path, profile: str):
    site.write_text(EXAMPLE.replace("    recipients: [keys/research.cert.pem]\n",
                                    f"    recipients: [keys/research.cert.pem]\n    profile: {profile}\n", 1))
    assert load_config(site).rules[0].profile == profile  # `auto` stays a name: the core resolves it per device


def test_an_unknown_profile_names_the_line_and_the_known_ones(site: Path, tmp_path: Path):
    err = _error(EXAMPLE.replace("    recipients: [keys/research.cert.pem]\n",
                                 "    recipients: [keys/research.cert.pem]\n    profile: quick\n", 1), tmp_path)
    assert err.line == 18 and "unknown profile 'quick'" in str(err) and "auto" in str(err) and "fast" in str(err)
