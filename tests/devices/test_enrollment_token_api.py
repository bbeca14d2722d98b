"""Enrollment tokens: creation (secret once, hash stored), validation, revocation, audit."""

import datetime as dt

import pytest
from django.utils import timezone

from devices.models import EnrollmentToken
from devices.services import hash_secret
from fleet.models import AuditEvent
from fleet_agent.identity import build_csr_pem, generate_private_key

pytestmark = pytest.mark.django_db


def create(client, **body):
    return client.post("/api/v1/enrollment-tokens/", {"name": "batch", **body}, format="json")


def test_create_stores_only_the_hash_and_audits(operator_api):
    response = create(operator_api, max_uses=3, tags=["camera"], auto_accept=False)
    assert response.status_code == 201
    secret = response.json()["token"]
    token = EnrollmentToken.objects.get()
    assert token.token_hash == hash_secret(secret)
    assert secret not in str(EnrollmentToken.objects.values())
    event = AuditEvent.objects.get(action="enrollment_token.create")
    assert event.after["max_uses"] == 3 and event.after["auto_accept"] is False
    assert secret not in str(event.after)
    assert "token" not in operator_api.get(f"/api/v1/enrollment-tokens/{token.pk}/").json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": "many"}, "max_uses"),
        ({"group": "nowhere"}, "group"),
        ({"tags": ["not a slug"]}, "tags"),
        ({"expires_at": "soon"}, "expires_at"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(operator_api, body, field):
    response = create(operator_api, **body)
    assert response.status_code == 400
    assert any(key.startswith(field) for key in response.json()["error"]["fields"])
    assert not EnrollmentToken.objects.exists()


def test_expiry_in_the_past_is_refused(operator_api):
    response = create(operator_api, expires_at=(timezone.now() - dt.timedelta(minutes=1)).isoformat())
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "expiry_in_past"


def test_revoke_stops_enrollment_and_is_audited_once(operator_api, anon_api):
    created = create(operator_api, max_uses=5).json()
    revoked = operator_api.post(f"/api/v1/enrollment-tokens/{created['id']}/revoke/")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    operator_api.post(f"/api/v1/enrollment-tokens/{created['id']}/revoke/")
    assert AuditEvent.objects.filter(action="enrollment_token.revoke").count() == 1
    enroll = anon_api.post(
        "/api/v1/enroll/",
        {"token": created["token"], "csr": build_csr_pem(generate_private_key(), "cam-1")},
        format="json",
    )
    assert enroll.status_code == 403
    assert enroll.json()["error"]["code"] == "token_revoked"
