import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from django.utils import timezone

from devices.models import Device, DeviceCertificate, DeviceStatus, EnrollmentToken
from fleet_agent.identity import build_csr_pem, generate_private_key
from tests.factories import make_token

pytestmark = pytest.mark.django_db


def enroll(client, token: str, cn: str | None = "cam-0001", **extra):
    key = generate_private_key()
    body = {"token": token, "csr": build_csr_pem(key, cn), "hardware_class": "rpi4", "runtime": "onnx"}
    body.update(extra)
    return client.post("/api/v1/enroll/", body, format="json")


def test_operator_creates_token_shown_once(operator_api):
    created = operator_api.post("/api/v1/enrollment-tokens/", {"name": "batch 7", "max_uses": 5}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("fet_")
    listed = operator_api.get("/api/v1/enrollment-tokens/").json()["results"]
    assert listed[0]["prefix"] == secret[:10]
    assert "token" not in listed[0]
    assert secret not in str(listed)
    # Only the hash is stored.
    assert not EnrollmentToken.objects.filter(token_hash=secret).exists()


def test_device_enrolls_and_gets_certificate_with_its_id_as_cn(anon_api):
    response = enroll(anon_api, make_token())
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["device_id"] == "cam-0001"
    assert body["status"] == "active"
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-0001"
    ca = x509.load_pem_x509_certificate(body["ca_chain"].encode())
    cert.verify_directly_issued_by(ca)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime < dt.timedelta(days=91)
    assert body["mqtt_url"].startswith("mqtt")
    assert body["device_token"].startswith("fdt_")
    device = Device.objects.get(pk="cam-0001")
    assert device.hardware_class == "rpi4"
    assert device.certificates.count() == 1


def test_empty_cn_gets_an_assigned_id(anon_api):
    response = enroll(anon_api, make_token(), cn=None)
    assert response.status_code == 201
    assert response.json()["device_id"].startswith("dev-")


def test_token_group_and_tags_apply_to_device(anon_api, operator_api):
    operator_api.post("/api/v1/groups/", {"name": "plant-a"}, format="json")
    token = operator_api.post(
        "/api/v1/enrollment-tokens/", {"name": "t", "group": "plant-a", "tags": ["camera", "line-3"]}, format="json"
    ).json()["token"]
    assert enroll(anon_api, token).status_code == 201
    device = operator_api.get("/api/v1/devices/cam-0001/").json()
    assert device["group"] == "plant-a"
    assert sorted(device["tags"]) == ["camera", "line-3"]


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda t: EnrollmentToken.objects.update(revoked_at=timezone.now()), 403, "token_revoked"),
        (
            lambda t: EnrollmentToken.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1)),
            403,
            "token_expired",
        ),
        (lambda t: EnrollmentToken.objects.update(uses=1), 403, "token_used_up"),
    ],
)
def test_unusable_token_is_refused_with_reason_and_creates_nothing(anon_api, mutate, status, code):
    token = make_token(max_uses=1)
    mutate(token)
    response = enroll(anon_api, token)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["fields"]["token"]
    assert Device.objects.count() == 0


def test_unknown_token_is_401(anon_api):
    response = enroll(anon_api, "fet_not-a-real-token")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_unknown"


def test_last_use_of_token_is_taken_once(anon_api):
    token = make_token(max_uses=1)
    assert enroll(anon_api, token, cn="cam-a").status_code == 201
    second = enroll(anon_api, token, cn="cam-b")
    assert second.json()["error"]["code"] == "token_used_up"
    assert not Device.objects.filter(pk="cam-b").exists()


def test_taken_id_is_409_and_consumes_no_use(anon_api):
    token = make_token(max_uses=5)
    assert enroll(anon_api, token).status_code == 201
    again = enroll(anon_api, token)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "device_id_taken"
    assert EnrollmentToken.objects.get().uses == 1


def test_csr_cn_must_match_requested_id(anon_api):
    response = enroll(anon_api, make_token(), cn="cam-0001", device_id="cam-0002")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "csr_mismatch"


def test_pending_device_gets_certificate_after_approval(anon_api, operator_api):
    body = enroll(anon_api, make_token(auto_accept=False)).json()
    assert body["status"] == "pending"
    assert body["certificate"] is None
    device_client = type(anon_api)()
    device_client.credentials(HTTP_AUTHORIZATION=f"Device {body['device_token']}")
    assert device_client.get("/api/v1/device/").json()["certificate"] is None
    approved = operator_api.post("/api/v1/devices/cam-0001/approve/")
    assert approved.status_code == 200
    assert approved.json()["status"] == "active"
    polled = device_client.get("/api/v1/device/").json()
    assert polled["status"] == "active"
    assert "BEGIN CERTIFICATE" in polled["certificate"]
    assert operator_api.post("/api/v1/devices/cam-0001/approve/").status_code == 409


def test_revoked_device_is_on_crl_and_refused_by_api(anon_api, operator_api):
    body = enroll(anon_api, make_token()).json()
    serial = x509.load_pem_x509_certificate(body["certificate"].encode()).serial_number
    revoked = operator_api.post("/api/v1/devices/cam-0001/revoke/", {"reason": "stolen"}, format="json")
    assert revoked.json()["status"] == "revoked"
    crl = x509.load_pem_x509_crl(anon_api.get("/api/v1/ca/crl.pem").content)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    device_client = type(anon_api)()
    device_client.credentials(HTTP_AUTHORIZATION=f"Device {body['device_token']}")
    refused = device_client.get("/api/v1/device/")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "device_token_invalid"
    assert DeviceCertificate.objects.get().revoked_at is not None
    assert Device.objects.get().status == DeviceStatus.REVOKED


def test_device_renews_its_certificate_with_a_fresh_csr(anon_api):
    body = enroll(anon_api, make_token()).json()
    device_client = type(anon_api)()
    device_client.credentials(HTTP_AUTHORIZATION=f"Device {body['device_token']}")
    new_key = generate_private_key()
    renewed = device_client.post(
        "/api/v1/device/certificate/", {"csr": build_csr_pem(new_key, "cam-0001")}, format="json"
    )
    assert renewed.status_code == 200
    cert = x509.load_pem_x509_certificate(renewed.json()["certificate"].encode())
    assert cert.public_key() == new_key.public_key()
    other = device_client.post(
        "/api/v1/device/certificate/", {"csr": build_csr_pem(new_key, "cam-9999")}, format="json"
    )
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "csr_mismatch"
