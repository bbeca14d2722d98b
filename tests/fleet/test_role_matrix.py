"""Who may call what: every operator endpoint against every kind of caller.

To cover a new endpoint, add it to READS, WRITES or ADMIN below; test_every_operator_endpoint_is_in_the_matrix
fails until it is (for the apps whose prefixes are listed in COVERED_PREFIXES).
"""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from devices import services as device_services
from fleet.models import Role
from fleet.services import Actor
from tests.conftest import device_client_for
from tests.factories import make_device, make_operator, make_token

pytestmark = pytest.mark.django_db


# (method, path, body). Paths use the objects made by the `world` fixture.
READS = [
    ("get", "/api/v1/devices/", None),
    ("get", "/api/v1/devices/cam-0001/", None),
    ("get", "/api/v1/groups/", None),
    ("get", "/api/v1/groups/plant-a/", None),
    ("get", "/api/v1/enrollment-tokens/", None),
    ("get", "/api/v1/enrollment-tokens/{token_id}/", None),
    ("get", "/api/v1/audit-events/", None),
    ("get", "/api/v1/me/", None),
]
WRITES = [
    ("post", "/api/v1/groups/", {"name": "new-group"}),
    ("put", "/api/v1/groups/plant-a/", {"name": "plant-a", "description": "north hall"}),
    ("patch", "/api/v1/groups/plant-a/", {"description": "north hall"}),
    ("delete", "/api/v1/groups/plant-a/", None),
    ("patch", "/api/v1/devices/cam-0001/", {"name": "door camera"}),
    ("post", "/api/v1/devices/bulk/", {"device_ids": ["cam-0001"], "add_tags": ["x"]}),
    ("post", "/api/v1/devices/cam-0001/approve/", None),
    ("post", "/api/v1/devices/cam-0001/revoke/", {"reason": "test"}),
    ("post", "/api/v1/enrollment-tokens/", {"name": "batch"}),
    ("post", "/api/v1/enrollment-tokens/{token_id}/revoke/", None),
]
ADMIN = [
    ("get", "/api/v1/operators/", None),
    ("get", "/api/v1/operators/someone/", None),
    ("post", "/api/v1/operators/", {"username": "newbie", "role": "viewer"}),
    ("patch", "/api/v1/operators/someone/", {"role": "viewer"}),
    ("post", "/api/v1/operators/someone/deactivate/", None),
]
# Endpoints that are not operator endpoints, with the reason.
PUBLIC = {
    ("post", "/api/v1/enroll/"),  # the enrollment token in the body is the credential
    ("get", "/api/v1/ca/certificate.pem"),  # public by nature
    ("get", "/api/v1/ca/crl.pem"),  # the broker and anyone may fetch it
}
DEVICE_ONLY = [
    ("get", "/api/v1/device/", None),
    ("post", "/api/v1/device/certificate/", {"csr": "x"}),
]
COVERED_PREFIXES = (
    "/api/v1/devices",
    "/api/v1/groups",
    "/api/v1/enrollment-tokens",
    "/api/v1/operators",
    "/api/v1/audit-events",
    "/api/v1/me",
    "/api/v1/enroll",
    "/api/v1/device",
    "/api/v1/ca",
)
OPERATOR_ENDPOINTS = READS + WRITES + ADMIN


def _ids(endpoints):
    return [f"{m.upper()} {p}" for m, p, _ in endpoints]


@pytest.fixture
def world():
    """A group, an enrolled device in it, an enrollment token and a second operator account."""
    group = device_services.group_create(actor=Actor.system("tests"), name="plant-a")
    result, _ = make_device("cam-0001", token=make_token(group=group))
    token = device_services.enrollment_token_create(actor=Actor.system("tests"), name="spare").token
    make_operator(role=Role.OPERATOR, username="someone")
    return {"token_id": token.pk, "device_token": result.device_token}


def call(client, method, path, body, world):
    return getattr(client, method)(path.format(**world), body, format="json")


def test_every_operator_endpoint_is_in_the_matrix():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    listed = [(m, p) for m, p, _ in OPERATOR_ENDPOINTS + DEVICE_ONLY] + sorted(PUBLIC)
    missing = []
    for path, operations in schema["paths"].items():
        if not path.startswith(COVERED_PREFIXES):
            continue
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        for method in operations:
            if not any(m == method and pattern.match(p) for m, p in listed):
                missing.append(f"{method.upper()} {path}")
    assert not missing, f"add these endpoints to the role matrix: {missing}"


@pytest.mark.parametrize(("method", "path", "body"), READS, ids=_ids(READS))
def test_viewer_can_read(viewer_api, world, method, path, body):
    assert call(viewer_api, method, path, body, world).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), WRITES + ADMIN, ids=_ids(WRITES + ADMIN))
def test_viewer_gets_403_on_every_write_and_admin_endpoint(viewer_api, world, method, path, body):
    response = call(viewer_api, method, path, body, world)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(("method", "path", "body"), READS + WRITES, ids=_ids(READS + WRITES))
def test_operator_can_read_and_write_devices_groups_tokens(operator_api, world, method, path, body):
    response = call(operator_api, method, path, body, world)
    # Allowed means: not refused for the role. Approving an active device is a 409, which is fine here.
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize(("method", "path", "body"), ADMIN, ids=_ids(ADMIN))
def test_operator_gets_403_on_operator_account_management(operator_api, world, method, path, body):
    response = call(operator_api, method, path, body, world)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=_ids(OPERATOR_ENDPOINTS))
def test_admin_can_call_every_operator_endpoint(admin_api, world, method, path, body):
    response = call(admin_api, method, path, body, world)
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=_ids(OPERATOR_ENDPOINTS))
def test_device_credential_cannot_use_operator_endpoints(world, method, path, body):
    response = call(device_client_for(world["device_token"]), method, path, body, world)
    assert response.status_code in (401, 403)
    assert "error" in response.json()


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=_ids(OPERATOR_ENDPOINTS))
def test_anonymous_gets_401_on_operator_endpoints(anon_api, world, method, path, body):
    response = call(anon_api, method, path, body, world)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ONLY, ids=_ids(DEVICE_ONLY))
def test_operator_credential_cannot_use_device_endpoints(admin_api, world, method, path, body):
    assert call(admin_api, method, path, body, world).status_code == 403


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ONLY, ids=_ids(DEVICE_ONLY))
def test_anonymous_gets_401_on_device_endpoints(anon_api, world, method, path, body):
    assert call(anon_api, method, path, body, world).status_code == 401


def test_deactivated_operator_token_stops_working(admin_api, operator_api):
    username = operator_api.user.username
    assert admin_api.post(f"/api/v1/operators/{username}/deactivate/").status_code == 200
    assert operator_api.get("/api/v1/devices/").status_code == 401
