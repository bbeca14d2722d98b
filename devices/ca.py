"""X.509 operations of the device CA, on plain `cryptography` objects (no database here).

Why EC P-256: small certificates and fast handshakes on constrained devices, supported by every TLS
stack a device is likely to have (mbedTLS, wolfSSL, OpenSSL).
"""

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Curves and RSA sizes we accept in a device CSR. Anything else is refused with a reason code.
ACCEPTED_CURVES = {"secp256r1", "secp384r1"}
MIN_RSA_BITS = 2048
MAX_CSR_BYTES = 16 * 1024
# Certificates are valid from a little in the past so that a device whose clock lags slightly accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)


class CsrError(ValueError):
    """A CSR that cannot be accepted; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedCsr:
    csr: x509.CertificateSigningRequest
    common_name: str  # "" when the device asks to be assigned an id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str, *, years: int = 10) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def encrypt_private_key(key, secret: str) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret.encode("utf-8")),
    )


def decrypt_private_key(pem: bytes, secret: str):
    return serialization.load_pem_private_key(pem, password=secret.encode("utf-8"))


def check_csr(pem: str) -> CheckedCsr:
    """Parse and vet a device CSR; raise CsrError with a reason code for anything we will not sign."""
    if not isinstance(pem, str) or not pem.strip():
        raise CsrError("csr_missing", "A PEM certificate signing request is required.")
    if len(pem) > MAX_CSR_BYTES:
        raise CsrError("csr_too_large", f"The CSR is larger than {MAX_CSR_BYTES} bytes.")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CsrError("csr_malformed", f"The CSR is not a valid PEM certificate signing request ({exc}).") from exc
    try:
        public_key = csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise CsrError("csr_key_algorithm", "The CSR's public key type is not supported.") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown key types
        raise CsrError("csr_key_algorithm", f"The CSR's public key type is not supported ({exc}).") from exc
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ACCEPTED_CURVES:
            raise CsrError(
                "csr_key_algorithm",
                f"Curve {public_key.curve.name} is not accepted; use P-256 (secp256r1) or P-384.",
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CsrError("csr_key_too_weak", f"RSA keys need at least {MIN_RSA_BITS} bits.")
    else:
        raise CsrError("csr_key_algorithm", "Only EC P-256/P-384 and RSA (2048+) keys are accepted.")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, InvalidSignature, Exception):  # unsupported signature hash raises here
        signature_ok = False
    if not signature_ok:
        raise CsrError("csr_signature_invalid", "The CSR's signature does not verify against its own key.")
    try:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise CsrError("csr_malformed", f"The CSR's subject cannot be read ({exc}).") from exc
    if len(names) > 1:
        raise CsrError("csr_subject_invalid", "The CSR's subject has more than one common name.")
    common_name = names[0].value if names else ""
    if not isinstance(common_name, str):
        raise CsrError("csr_subject_invalid", "The CSR's common name is not text.")
    return CheckedCsr(csr=csr, common_name=common_name)


def issue_certificate(
    *,
    ca_key,
    ca_cert: x509.Certificate,
    public_key,
    common_name: str,
    days: int,
    server_names: list[str] | None = None,
) -> x509.Certificate:
    """Sign a leaf certificate: a client certificate for a device or platform client, or (with
    ``server_names``) a server certificate for the broker."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        # 159 random bits: unpredictable serials (CA/B forum practice) and no collisions to manage.
        .serial_number(int.from_bytes(secrets.token_bytes(20), "big") >> 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
    )
    if server_names:
        sans = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def build_crl(
    *, ca_key, ca_cert: x509.Certificate, revoked: list[tuple[int, dt.datetime]], days: int
) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, revoked_at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
