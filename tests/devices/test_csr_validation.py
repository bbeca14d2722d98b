"""CSR edge cases at POST /api/v1/enroll/: each is refused with its reason code, creates nothing and
consumes no use of the enrollment token."""

import base64
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from devices import authority
from devices.models import Device, DeviceCertificate, EnrollmentToken
from tests.factories import make_token

pytestmark = [
    pytest.mark.django_db,
    # cryptography warns about the over-long CN that the test sends on purpose.
    pytest.mark.filterwarnings("ignore:Attribute.s length must be:UserWarning"),
]


SHA256 = hashes.SHA256()


def csr_pem(key, names: list[str] | None = ("cam-0001",), algorithm=SHA256) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n, _validate=False) for n in names or []])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def pem_armor(label: str, der: bytes) -> str:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


def tampered_csr() -> str:
    """A well-formed CSR whose subject was changed after signing: its signature no longer verifies."""
    der = x509.load_pem_x509_csr(csr_pem(ec.generate_private_key(ec.SECP256R1())).encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert b"cam-0001" in der
    return pem_armor("CERTIFICATE REQUEST", der.replace(b"cam-0001", b"cam-0002"))


def a_certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue_client_certificate(public_key=key.public_key(), common_name="cam-0001")
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def rsa_key(bits: int):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


REFUSED = {
    "malformed_pem": (
        lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 !!\n-----END CERTIFICATE REQUEST-----\n",
        400,
        "csr_malformed",
    ),
    "not_pem_at_all": (lambda: "hello, I am a device", 400, "csr_malformed"),
    "garbage_base64": (lambda: pem_armor("CERTIFICATE REQUEST", os.urandom(300)), 400, "csr_malformed"),
    "certificate_not_csr": (a_certificate, 400, "csr_malformed"),
    "bad_signature": (tampered_csr, 400, "csr_signature_invalid"),
    "rsa_1024": (lambda: csr_pem(rsa_key(1024)), 400, "csr_key_too_weak"),
    "secp256k1": (lambda: csr_pem(ec.generate_private_key(ec.SECP256K1())), 400, "csr_key_algorithm"),
    "p521": (lambda: csr_pem(ec.generate_private_key(ec.SECP521R1())), 400, "csr_key_algorithm"),
    "ed25519": (lambda: csr_pem(ed25519.Ed25519PrivateKey.generate(), algorithm=None), 400, "csr_key_algorithm"),
    "two_common_names": (
        lambda: csr_pem(ec.generate_private_key(ec.SECP256R1()), names=["cam-0001", "cam-0002"]),
        400,
        "csr_subject_invalid",
    ),
    "invalid_id_chars": (
        lambda: csr_pem(ec.generate_private_key(ec.SECP256R1()), names=["Cam_01!"]),
        400,
        "device_id_invalid",
    ),
    "cn_too_long": (
        lambda: csr_pem(ec.generate_private_key(ec.SECP256R1()), names=["a" * 64]),
        400,
        "device_id_invalid",
    ),
    "cn_much_too_long": (
        lambda: csr_pem(ec.generate_private_key(ec.SECP256R1()), names=["a" * 300]),
        400,
        "device_id_invalid",
    ),
}


@pytest.fixture
def token() -> str:
    return make_token(max_uses=3)


def enroll(client, token: str, csr: str):
    return client.post("/api/v1/enroll/", {"token": token, "csr": csr}, format="json")


def assert_nothing_created() -> None:
    assert Device.objects.count() == 0
    assert DeviceCertificate.objects.count() == 0
    assert EnrollmentToken.objects.get().uses == 0


@pytest.mark.parametrize(("make_csr", "status", "code"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_csr_is_refused_with_reason_and_creates_nothing(anon_api, token, make_csr, status, code):
    response = enroll(anon_api, token, make_csr())
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["fields"]
    assert_nothing_created()


def test_oversized_csr_is_refused_before_parsing(anon_api, token):
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    huge = csr.replace("-----END", "A" * 20_000 + "\n-----END")
    response = enroll(anon_api, token, huge)
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["csr"][0]["code"] == "max_length"
    assert_nothing_created()


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa_key(2048),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ec.generate_private_key(ec.SECP256R1()),
    ],
    ids=["rsa_2048", "p384", "p256"],
)
def test_accepted_key_types_get_a_certificate_for_that_key(anon_api, token, make_key):
    key = make_key()
    response = enroll(anon_api, token, csr_pem(key))
    assert response.status_code == 201, response.content
    cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert EnrollmentToken.objects.get().uses == 1
