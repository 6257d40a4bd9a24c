"""The restoration record: several recipients, openssl interop, forged and swapped signatures,
a record moved onto another object."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest

from miadmark.dicomio import read_dicom
from miadmark.errors import RecordCorruptError, SignatureInvalidError, UntrustedSignerError
from miadmark.protect import inspect_record, open_record, protect, strip
from miadmark.record import SIGNATURE_CREATOR, SIGNATURE_GROUP, _decode, _encode, decrypt, encrypt

from conftest import DICOM_DATA

SOURCE = DICOM_DATA / "transfer_syntaxes" / "LittleEndianExplicit" / "CT_small.dcm"


@pytest.fixture(scope="module")
def protected(site_keys):
    return protect(read_dicom(SOURCE), recipients=[site_keys["research"].cert, site_keys["other"].cert],
                   signer=site_keys["hospital"], profile="plain")


def test_every_recipient_can_strip_and_inspect_lists_them(protected, site_keys):
    original = read_dicom(SOURCE)
    for who in ("research", "other"):
        stripped = strip(protected, keyring=[site_keys[who]], trust=[site_keys["hospital"].cert])
        assert stripped.PixelData == original.PixelData
    info = inspect_record(protected)
    assert len(info["recipients"]) == 2 and info["signer_claimed"] == "hospital"
    detail = inspect_record(protected, [site_keys["research"]])
    assert detail["signer"]["subject"] == "CN=hospital" and detail["watermark"]["profile"] == "plain"
    assert detail["watermark"]["frames"][0]["box"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_record_opens_with_openssl_cms(protected, site_keys, tmp_path):
    der = tmp_path / "record.der"
    der.write_bytes(bytes(protected.EncryptedAttributesSequence[0].EncryptedContent))
    key, cert = site_keys["research_paths"]
    out = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-binary", "-in", str(der),
                          "-recip", str(cert), "-inkey", str(key)], capture_output=True, check=True).stdout
    assert out == decrypt(der.read_bytes(), [site_keys["research"]])


def _resealed(protected, site_keys, mutate):
    """Decrypt the record, change its signature block, re-encrypt for research."""
    ds = copy.deepcopy(protected)
    plain = decrypt(bytes(ds.EncryptedAttributesSequence[0].EncryptedContent), [site_keys["research"]])
    full = _decode(plain)
    block = full.private_block(SIGNATURE_GROUP, SIGNATURE_CREATOR)
    mutate(full, block)
    ds.EncryptedAttributesSequence[0].EncryptedContent = encrypt(_encode(full), [site_keys["research"].cert])
    return ds


def test_swapped_signer_certificate_is_refused(protected, site_keys):
    from cryptography.hazmat.primitives import serialization

    other_pem = site_keys["other"].cert.public_bytes(serialization.Encoding.PEM).decode()
    ds = _resealed(protected, site_keys, lambda full, block: setattr(block[0x02], "value", other_pem))
    with pytest.raises(SignatureInvalidError):
        strip(ds, keyring=[site_keys["research"]], trust=None)


def test_forged_signature_is_refused(protected, site_keys):
    def forge(full, block):
        sig = bytearray(block[0x03].value)
        sig[0] ^= 0xFF
        block[0x03].value = bytes(sig)
    ds = _resealed(protected, site_keys, forge)
    with pytest.raises(SignatureInvalidError):
        strip(ds, keyring=[site_keys["research"]], trust=None)


def test_altered_record_content_breaks_the_signature(protected, site_keys):
    def alter(full, block):
        full.ModifiedAttributesSequence[0].SOPInstanceUID = "1.2.3.4"
    ds = _resealed(protected, site_keys, alter)
    with pytest.raises(SignatureInvalidError):
        strip(ds, keyring=[site_keys["research"]], trust=None)


def test_untrusted_signer_and_transplanted_record(protected, site_keys):
    with pytest.raises(UntrustedSignerError):
        strip(protected, keyring=[site_keys["research"]], trust=[site_keys["other"].cert])
    other = protect(read_dicom(SOURCE), recipients=[site_keys["research"].cert], signer=site_keys["hospital"],
                    profile="plain")
    other.EncryptedAttributesSequence = copy.deepcopy(protected.EncryptedAttributesSequence)
    with pytest.raises(RecordCorruptError, match="another object"):
        open_record(other, [site_keys["research"]])
