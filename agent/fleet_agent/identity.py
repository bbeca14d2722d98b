"""The device's own key pair and certificate signing request.

The private key is made on the device and never leaves it: only the CSR (public key + proof of
possession) is sent to the platform.
"""

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_csr_pem(key, device_id: str | None) -> str:
    """A PEM CSR whose CN is the requested device id (an empty subject asks the platform to assign one)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)] if device_id else [])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def write_private_file(path: Path, content: bytes) -> None:
    """Write a secret file readable by its owner only (0600), atomically and durably."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
