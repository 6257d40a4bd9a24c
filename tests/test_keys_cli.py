"""Issue 14, finding 11: `keys new` never silently replaces a key; `rules check` fails on unusable keys."""

from __future__ import annotations


from miadmark.cli import main
from miadmark.keys import load_identity, new_identity


def test_keys_new_refuses_to_overwrite_and_force_keeps_the_old_pair(tmp_path, capsys):
    assert main(["keys", "new", "research", "--out", str(tmp_path)]) == 0
    key, cert = tmp_path / "research.key.pem", tmp_path / "research.cert.pem"
    old_key, old_cert = key.read_bytes(), cert.read_bytes()
    capsys.readouterr()

    assert main(["keys", "new", "research", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{key} already exists" in err and "--force" in err
    assert key.read_bytes() == old_key and cert.read_bytes() == old_cert

    assert main(["keys", "new", "research", "--out", str(tmp_path), "--force"]) == 0
    out = capsys.readouterr().out
    assert key.read_bytes() != old_key
    retired_key = next(tmp_path.glob("research.retired-*.key.pem"))
    retired_cert = next(tmp_path.glob("research.retired-*.cert.pem"))
    assert retired_key.read_bytes() == old_key and retired_cert.read_bytes() == old_cert
    assert retired_key.stat().st_mode & 0o777 == 0o600
    assert f"kept {retired_key}" in out
    load_identity(retired_key, retired_cert)  # the old pair still loads: what was protected for it opens

    assert main(["keys", "new", "research", "--out", str(tmp_path), "--force"]) == 0  # same second: no clash
    assert len(list(tmp_path.glob("research.retired-*.key.pem"))) == 2


CONFIG = """\
identity: {{key: {identity_key}, cert: {identity_cert}}}
destinations:
  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: 11113}}
rules:
  - send_to: [research]
    action: protect
    recipients: [{research_cert}]
receiver:
  store: received/
  quarantine: quarantine/
  keys: {receiver_keys}
  trust: [{identity_cert}]
"""


def _config(tmp_path, **override):
    keys = tmp_path / "keys"
    if not keys.exists():
        for name in ("hospital", "research", "other"):
            new_identity(name, keys)
    values = {"identity_key": keys / "hospital.key.pem", "identity_cert": keys / "hospital.cert.pem",
              "research_cert": keys / "research.cert.pem",
              "receiver_keys": f"[{{key: {keys / 'research.key.pem'}, cert: {keys / 'research.cert.pem'}}}]"}
    values.update(override)
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG.format(**values))
    return path


def test_rules_check_accepts_matching_keys(tmp_path, capsys):
    assert main(["rules", "check", "--config", str(_config(tmp_path))]) == 0
    assert "OK: 1 destination(s), 1 rule(s)" in capsys.readouterr().out


def test_rules_check_fails_on_a_key_that_does_not_match_its_certificate(tmp_path, capsys):
    keys = tmp_path / "keys"
    _config(tmp_path)
    cfg = _config(tmp_path, identity_key=keys / "other.key.pem")
    assert main(["rules", "check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"identity: key {keys / 'other.key.pem'} does not match certificate {keys / 'hospital.cert.pem'}" in err
    cfg = _config(tmp_path, receiver_keys=f"[{{key: {keys / 'other.key.pem'}, cert: {keys / 'research.cert.pem'}}}]")
    assert main(["rules", "check", "--config", str(cfg)]) == 2
    assert "receiver.keys[0]: key" in capsys.readouterr().err


def test_rules_check_fails_on_a_receiver_without_keys(tmp_path, capsys):
    cfg = _config(tmp_path, receiver_keys="[]")
    assert main(["rules", "check", "--config", str(cfg)]) == 2
    assert "receiver.keys: no key" in capsys.readouterr().err


def test_rules_check_fails_on_a_wrong_passphrase(tmp_path, capsys):
    keys = tmp_path / "keys"
    _config(tmp_path)
    new_identity("locked", keys, passphrase=b"right")
    (keys / "pw.txt").write_text("wrong\n")
    cfg = _config(tmp_path, receiver_keys=f"[{{key: {keys / 'locked.key.pem'}, cert: {keys / 'locked.cert.pem'}, "
                                          f"passphrase_file: {keys / 'pw.txt'}}}]")
    assert main(["rules", "check", "--config", str(cfg)]) == 2
    assert "wrong passphrase" in capsys.readouterr().err
