"""Server side of certificate renewal: only an active device renews, for its own id, with a good CSR."""

import pytest
from cryptography import x509

from devices import services
from devices.models import Device, DeviceCertificate
from fleet.errors import ApiError
from fleet.models import AuditEvent
from fleet.services import Actor
from fleet_agent.identity import build_csr_pem, generate_private_key
from tests.conftest import device_client_for
from tests.factories import make_device, make_token

pytestmark = pytest.mark.django_db


def renew(device_token: str, cn: str, key=None):
    key = key or generate_private_key()
    return device_client_for(device_token).post(
        "/api/v1/device/certificate/", {"csr": build_csr_pem(key, cn)}, format="json"
    )


def test_active_device_gets_a_new_certificate_and_keeps_the_old_until_expiry():
    result, _ = make_device("cam-1")
    key = generate_private_key()
    response = renew(result.device_token, "cam-1", key)
    assert response.status_code == 200, response.content
    cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert DeviceCertificate.objects.filter(device_id="cam-1", revoked_at__isnull=True).count() == 2
    assert AuditEvent.objects.filter(action="device.renew_certificate", object_id="cam-1").count() == 1


def test_pending_device_cannot_renew():
    result, _ = make_device("cam-1", token=make_token(auto_accept=False))
    response = renew(result.device_token, "cam-1")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "device_not_active"
    assert not DeviceCertificate.objects.exists()


def test_revoked_device_cannot_renew_over_http_or_through_the_service():
    result, _ = make_device("cam-1")
    services.device_revoke(actor=Actor.system("tests"), device=Device.objects.get(pk="cam-1"))
    response = renew(result.device_token, "cam-1")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "device_token_invalid"
    # Even a caller that skipped authentication gets nothing from the service.
    with pytest.raises(ApiError) as refused:
        services.device_renew_certificate(
            device=Device.objects.get(pk="cam-1"), csr_pem=build_csr_pem(generate_private_key(), "cam-1")
        )
    assert refused.value.error_code == "device_not_active"
    assert DeviceCertificate.objects.filter(revoked_at__isnull=True).count() == 0


def test_renewal_for_another_id_is_refused():
    make_device("cam-2")
    result, _ = make_device("cam-1")
    response = renew(result.device_token, "cam-2")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "csr_mismatch"
    assert DeviceCertificate.objects.filter(device_id="cam-1").count() == 1


def test_renewal_with_a_malformed_csr_is_a_400():
    result, _ = make_device("cam-1")
    response = device_client_for(result.device_token).post(
        "/api/v1/device/certificate/", {"csr": "not a csr"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "csr_malformed"
