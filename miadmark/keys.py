"""Site identities: an RSA private key and its X.509 certificate.

`miadmark keys new NAME` writes NAME.key.pem (mode 0600, encrypted with a passphrase when given)
and a self-signed NAME.cert.pem. Sites may use certificates from their own CA instead.

An existing key is never overwritten silently: every object protected for it would become
unrecoverable. new_identity refuses (KeyExistsError) unless force=True, and then first renames the
old pair to NAME.retired-<UTC timestamp>.{key,cert}.pem, so it can still strip what it received.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .dicomio import write_atomic
from .errors import KeyExistsError, KeyLoadError

RSA_BITS = 3072
MIN_RSA_BITS = 3072


@dataclass(frozen=True)
class Identity:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def name(self) -> str:
        return subject_name(self.cert)


def subject_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate as `openssl x509 -noout -fingerprint -sha256` prints it: two certificates
    with the same CN are told apart by this (docs/two-sites.md compares it over a second channel)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def describe(cert: x509.Certificate) -> str:
    return f"{cert.issuer.rfc4514_string()} serial {cert.serial_number:x}"


def new_identity(name: str, out_dir: str | os.PathLike, passphrase: bytes | None = None,
                 days: int = 3650, force: bool = False) -> tuple[Path, Path]:
    out = Path(out_dir)
    key_path, cert_path = out / f"{name}.key.pem", out / f"{name}.cert.pem"
    existing = [p for p in (key_path, cert_path) if p.exists()]
    if existing and not force:
        raise KeyExistsError(f"{existing[0]} already exists; replacing it would make every object protected "
                             "for it unrecoverable (--force keeps the old pair under a retired name)")
    if existing:
        retire(name, out)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(key_pem, key_path, mode=0o600)  # 0600 before a byte of the key is written
    write_atomic(cert.public_bytes(serialization.Encoding.PEM), cert_path)
    return key_path, cert_path


def retire(name: str, out_dir: str | os.PathLike) -> list[Path]:
    """Rename NAME.key.pem / NAME.cert.pem to NAME.retired-<UTC timestamp>.*.pem (never over another file)."""
    out = Path(out_dir)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        tag = f"retired-{stamp}" + (f"-{n}" if n else "")
        targets = {kind: out / f"{name}.{tag}.{kind}.pem" for kind in ("key", "cert")}
        if not any(t.exists() for t in targets.values()):
            break
    moved = []
    for kind, target in targets.items():
        source = out / f"{name}.{kind}.pem"
        if source.exists():
            os.link(source, target)  # fails rather than replace; the old name goes only once the new one exists
            source.unlink()
            moved.append(target)
    return moved


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyLoadError(f"certificate {path}: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise KeyLoadError(f"certificate {path}: RSA key of at least {MIN_RSA_BITS} bits required")
    return cert


def load_certificates(paths) -> list[x509.Certificate]:
    return [load_certificate(p) for p in paths]


def load_identity(key_path: str | os.PathLike, cert_path: str | os.PathLike,
                  passphrase: bytes | None = None) -> Identity:
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=passphrase)
    except TypeError:
        raise KeyLoadError(f"key {key_path}: encrypted key, a passphrase is required") from None
    except ValueError:
        raise KeyLoadError(f"key {key_path}: wrong passphrase or not a PEM private key") from None
    except OSError as exc:
        raise KeyLoadError(f"key {key_path}: {exc.strerror}") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
        raise KeyLoadError(f"key {key_path}: RSA key of at least {MIN_RSA_BITS} bits required")
    cert = load_certificate(cert_path)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise KeyLoadError(f"key {key_path} does not match certificate {cert_path}")
    return Identity(key=key, cert=cert)


def read_passphrase(path: str | os.PathLike | None) -> bytes | None:
    if path is None:
        return None
    data = Path(path).read_bytes().rstrip(b"\r\n")
    if not data:
        raise KeyLoadError(f"passphrase file {path} is empty")
    return data
