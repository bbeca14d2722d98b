"""Operator account management at /api/v1/operators/ (admins only; the role matrix covers the refusals)."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from fleet.models import AuditEvent, Role, User

pytestmark = pytest.mark.django_db


def test_create_returns_the_api_token_once_and_never_the_password(admin_api):
    response = admin_api.post(
        "/api/v1/operators/",
        {"username": "alice", "role": "operator", "email": "a@example.com", "password": "a long passphrase 42"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["role"] == "operator"
    assert "password" not in body
    api_token = body["api_token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token}")
    assert client.get("/api/v1/me/").json() == {"username": "alice", "role": "operator"}
    assert User.objects.get(username="alice").check_password("a long passphrase 42")
    listed = admin_api.get("/api/v1/operators/").json()["results"]
    assert api_token not in str(listed)
    assert "password" not in listed[0]
    detail = admin_api.get("/api/v1/operators/alice/").json()
    assert "api_token" not in detail and "password" not in detail
    event = AuditEvent.objects.get(action="operator.create", object_id="alice")
    assert event.actor == f"user:{admin_api.user.username}"
    assert event.after == {"username": "alice", "email": "a@example.com", "role": "operator", "is_active": True}
    assert "passphrase" not in str(AuditEvent.objects.values())


def test_account_created_without_password_cannot_log_in(admin_api):
    admin_api.post("/api/v1/operators/", {"username": "robot", "role": "viewer"}, format="json")
    assert not User.objects.get(username="robot").has_usable_password()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "bob", "role": "superuser"}, "role"),
        ({"username": "bad name!", "role": "viewer"}, "username"),
        ({"username": "bob", "role": "viewer", "email": "not-an-email"}, "email"),
        ({"role": "viewer"}, "username"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(admin_api, body, field):
    response = admin_api.post("/api/v1/operators/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_weak_password_is_refused(admin_api):
    response = admin_api.post(
        "/api/v1/operators/", {"username": "bob", "role": "viewer", "password": "short"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "password_too_weak"
    assert not User.objects.filter(username="bob").exists()


def test_duplicate_username_is_a_409(admin_api):
    admin_api.post("/api/v1/operators/", {"username": "bob", "role": "viewer"}, format="json")
    again = admin_api.post("/api/v1/operators/", {"username": "BOB", "role": "viewer"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "operator_exists"


def test_role_change_takes_effect_and_is_audited(admin_api, viewer_api):
    username = viewer_api.user.username
    assert viewer_api.post("/api/v1/groups/", {"name": "g1"}, format="json").status_code == 403
    response = admin_api.patch(f"/api/v1/operators/{username}/", {"role": "operator"}, format="json")
    assert response.status_code == 200
    assert response.json()["role"] == "operator"
    assert viewer_api.post("/api/v1/groups/", {"name": "g1"}, format="json").status_code == 201
    event = AuditEvent.objects.get(action="operator.set_role")
    assert (event.before["role"], event.after["role"]) == ("viewer", "operator")


def test_deactivate_blocks_token_and_login_and_is_audited(admin_api, operator_api):
    username = operator_api.user.username
    response = admin_api.post(f"/api/v1/operators/{username}/deactivate/")
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert operator_api.get("/api/v1/devices/").status_code == 401
    assert not Token.objects.filter(user__username=username).exists()
    assert not APIClient().login(username=username, password="correct horse battery")
    event = AuditEvent.objects.get(action="operator.deactivate")
    assert (event.before["is_active"], event.after["is_active"]) == (True, False)


def test_last_admin_cannot_be_demoted_or_deactivated(admin_api):
    me = admin_api.user.username
    demote = admin_api.patch(f"/api/v1/operators/{me}/", {"role": "viewer"}, format="json")
    assert demote.status_code == 409
    assert demote.json()["error"]["code"] == "last_admin"
    deactivate = admin_api.post(f"/api/v1/operators/{me}/deactivate/")
    assert deactivate.status_code == 409
    assert User.objects.get(username=me).role == Role.ADMIN
    assert User.objects.get(username=me).is_active


def test_an_admin_can_be_demoted_when_another_admin_remains(admin_api):
    admin_api.post("/api/v1/operators/", {"username": "second", "role": "admin"}, format="json")
    response = admin_api.patch("/api/v1/operators/second/", {"role": "operator"}, format="json")
    assert response.status_code == 200
    assert not User.objects.get(username="second").is_staff


def test_filter_by_role(admin_api, viewer_api):
    listed = admin_api.get("/api/v1/operators/?role=viewer").json()["results"]
    assert [u["username"] for u in listed] == [viewer_api.user.username]


def test_unknown_operator_is_a_404(admin_api):
    assert admin_api.patch("/api/v1/operators/nobody/", {"role": "viewer"}, format="json").status_code == 404
