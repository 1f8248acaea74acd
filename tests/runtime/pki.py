"""A test PKI: a CA and a server certificate for 127.0.0.1, and an OpenSSL hashed CA directory.

Used by the HTTP client tests and by bench/runtime.py (https figures).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Pki", "make_pki", "name_hash"]


@dataclass(frozen=True)
class Pki:
    """A CA (lower-case common name, so its OpenSSL subject hash is easy to compute) and a
    server certificate for 127.0.0.1 it signed."""

    ca_pem: Path
    #: an OpenSSL CA directory holding the CA as ``<subject hash>.0`` (and, when asked, links
    #: to every CA of the system's directory)
    ca_dir: Path
    #: the server's certificate and private key, PEM
    server_pem: Path


def name_hash(common_name: str) -> str:
    """OpenSSL's X509_NAME_hash of a name holding only this (lower-case ASCII) CN: the first
    four bytes, little-endian, of SHA-1 over the canonical DER of its RDN set."""
    value = common_name.encode()
    atv = b"\x06\x03\x55\x04\x03" + b"\x0c" + bytes([len(value)]) + value
    seq = b"\x30" + bytes([len(atv)]) + atv
    rdn = b"\x31" + bytes([len(seq)]) + seq
    digest = hashlib.sha1(rdn).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def make_pki(base: Path, cn: str, *, system_dir: str | None = None) -> Pki:
    """Create the CA and the server certificate under ``base``; ``system_dir``: also link
    every hash-named CA of that directory into ``ca_dir`` (the system store plus this CA)."""
    if cn != cn.lower() or not cn.isascii():
        raise ValueError(f"the CA name must be lower-case ASCII, found {cn!r}")
    base.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_pem = base / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ca_dir = base / "certs"
    ca_dir.mkdir()
    if system_dir is not None and os.path.isdir(system_dir):
        for entry in os.scandir(system_dir):
            name = entry.name
            if len(name) > 9 and name[8] == "." and all(c in "0123456789abcdef" for c in name[:8]):
                (ca_dir / name).symlink_to(entry.path)
    own = ca_dir / f"{name_hash(cn)}.0"
    n = 0
    while own.exists() or own.is_symlink():  # a system CA with the same hash: next slot
        n += 1
        own = ca_dir / f"{name_hash(cn)}.{n}"
    own.write_bytes(ca_pem.read_bytes())
    server_pem = base / "server.pem"
    server_pem.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    )  # fmt: skip
    return Pki(ca_pem, ca_dir, server_pem)
