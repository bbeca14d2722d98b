"""Who may call what: every operator endpoint (tests/fleet/endpoints.py) against every kind of caller.

test_every_operator_endpoint_is_in_the_matrix fails when an endpoint under COVERED_PREFIXES is missing
from tests/fleet/endpoints.py.
"""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.conftest import device_client_for
from tests.fleet.endpoints import (
    ADMIN,
    COVERED_PREFIXES,
    DEVICE_ONLY,
    OPERATOR_ENDPOINTS,
    OTHER_ADMIN,
    OTHER_READS,
    OTHER_WRITES,
    PUBLIC,
    READS,
    WRITES,
    call,
    ids,
)

ALL_READS = READS + OTHER_READS
ALL_WRITES = WRITES + OTHER_WRITES
ALL_ADMIN = ADMIN + OTHER_ADMIN

pytestmark = pytest.mark.django_db


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


@pytest.mark.parametrize(("method", "path", "body"), READS, ids=ids(READS))
def test_viewer_can_read(viewer_api, world, method, path, body):
    assert call(viewer_api, method, path, body, world).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), OTHER_READS, ids=ids(OTHER_READS))
def test_viewer_is_let_through_on_other_apps_reads(viewer_api, world, method, path, body):
    response = call(viewer_api, method, path, body, world)
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize(("method", "path", "body"), ALL_WRITES + ALL_ADMIN, ids=ids(ALL_WRITES + ALL_ADMIN))
def test_viewer_gets_403_on_every_write_and_admin_endpoint(viewer_api, world, method, path, body):
    response = call(viewer_api, method, path, body, world)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(("method", "path", "body"), ALL_READS + ALL_WRITES, ids=ids(ALL_READS + ALL_WRITES))
def test_operator_can_read_and_write_devices_groups_tokens(operator_api, world, method, path, body):
    response = call(operator_api, method, path, body, world)
    # Allowed means: not refused for the role. Approving an active device is a 409, which is fine here.
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize(("method", "path", "body"), ALL_ADMIN, ids=ids(ALL_ADMIN))
def test_operator_gets_403_on_operator_accounts_and_keys(operator_api, world, method, path, body):
    response = call(operator_api, method, path, body, world)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=ids(OPERATOR_ENDPOINTS))
def test_admin_can_call_every_operator_endpoint(admin_api, world, method, path, body):
    response = call(admin_api, method, path, body, world)
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=ids(OPERATOR_ENDPOINTS))
def test_device_credential_cannot_use_operator_endpoints(world, method, path, body):
    response = call(device_client_for(world["device_token"]), method, path, body, world)
    assert response.status_code in (401, 403)
    assert "error" in response.json()


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS, ids=ids(OPERATOR_ENDPOINTS))
def test_anonymous_gets_401_on_operator_endpoints(anon_api, world, method, path, body):
    response = call(anon_api, method, path, body, world)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ONLY, ids=ids(DEVICE_ONLY))
def test_operator_credential_cannot_use_device_endpoints(admin_api, world, method, path, body):
    assert call(admin_api, method, path, body, world).status_code == 403


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ONLY, ids=ids(DEVICE_ONLY))
def test_anonymous_gets_401_on_device_endpoints(anon_api, world, method, path, body):
    assert call(anon_api, method, path, body, world).status_code == 401


def test_deactivated_operator_token_stops_working(admin_api, operator_api):
    username = operator_api.user.username
    assert admin_api.post(f"/api/v1/operators/{username}/deactivate/").status_code == 200
    assert operator_api.get("/api/v1/devices/").status_code == 401
