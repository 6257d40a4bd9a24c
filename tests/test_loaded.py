"""miadmark.loaded: one process-wide cache of identities, certificates (by path and mtime) and engines
(by profile and device), used by the gateway, the receiving node, the Orthanc plugin and the release."""

from __future__ import annotations

import os

import pytest

from miadmark import loaded
from miadmark.errors import KeyLoadError
from miadmark.keys import new_identity


@pytest.fixture(autouse=True)
def empty_cache():
    loaded.forget()
    yield
    loaded.forget()


def test_an_identity_is_loaded_once_and_again_when_its_files_change(tmp_path):
    key, cert = new_identity("site", tmp_path)
    first = loaded.identity(key, cert)
    assert loaded.identity(str(key), str(cert)) is first
    assert loaded.certificates([cert])[0] is loaded.certificate(cert)
    before = os.stat(key).st_mtime_ns
    new_identity("site", tmp_path, force=True)  # a new pair under the same names
    os.utime(key, ns=(before + 10**9, before + 10**9))  # a coarse clock must not hide the change
    again = loaded.identity(key, cert)
    assert again is not first
    assert again.key.public_key().public_numbers() != first.key.public_key().public_numbers()
    assert loaded.certificate(cert) == again.cert


def test_a_failure_is_not_cached(tmp_path):
    with pytest.raises(KeyLoadError, match="site.key.pem"):
        loaded.identity(tmp_path / "site.key.pem", tmp_path / "site.cert.pem")
    with pytest.raises(KeyLoadError, match="other.cert.pem"):
        loaded.certificate(tmp_path / "other.cert.pem")
    key, cert = new_identity("site", tmp_path)
    assert loaded.identity(key, cert).name == "site"


def test_a_mismatched_pair_is_refused_every_time(tmp_path):
    key, _ = new_identity("a", tmp_path)
    _, cert = new_identity("b", tmp_path)
    for _ in range(2):
        with pytest.raises(KeyLoadError, match="does not match"):
            loaded.identity(key, cert)


def test_an_engine_is_built_once_per_profile_and_device():
    plain = loaded.engine("plain", "cpu")
    assert loaded.engine("plain", "cpu") is plain
    assert type(plain).__name__ == "PlainLogoEngine"
    with pytest.raises(ValueError, match="unknown profile"):
        loaded.engine("plian", "cpu")


def test_warm_builds_each_profile_once_before_the_first_protect():
    from miadmark.engine import DEFAULT_PROFILE, resolve_profile
    loaded.warm(["plain", None, "plain"], "cpu")
    assert set(loaded._engines) == {(resolve_profile(p, "cpu"), "cpu") for p in ("plain", DEFAULT_PROFILE)}
    with pytest.raises(ValueError, match="unknown profile"):  # a wrong profile is said, not hidden
        loaded.warm(["plian"], "cpu")
