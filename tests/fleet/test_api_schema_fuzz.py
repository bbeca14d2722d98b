"""Schema-driven fuzzing: schemathesis generates requests for every operation in /api/v1/schema/ and
the API must never answer with a server error.

Requests go to the Django WSGI app in-process, authenticated as an admin (so every operation is
reachable), against a database seeded with a group, devices (active and pending), an enrollment token
and a second operator, so that path parameters can name real objects.
"""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from devices import services as device_services
from fleet.models import Role
from fleet.services import Actor
from fleet.wsgi import application
from tests.factories import make_device, make_operator, make_token


@pytest.fixture
def wsgi_keeps_test_connection():
    """The WSGI handler closes the database connection after each request, which would end the test's
    transaction; Django's own test client disconnects the same handlers while it runs."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def seeded_world(db, wsgi_keeps_test_connection):
    group = device_services.group_create(actor=Actor.system("tests"), name="plant-a")
    make_device("cam-0001", token=make_token(group=group, tags=["camera"]))
    make_device("cam-0002", token=make_token(auto_accept=False))
    token = device_services.enrollment_token_create(actor=Actor.system("tests"), name="spare").token
    make_operator(role=Role.VIEWER, username="someone")
    _, admin_token = make_operator(role=Role.ADMIN, username="fuzzer")
    return {
        "token": admin_token,
        # A real object for each kind of path parameter.
        "path_values": {"id": ["cam-0001", "cam-0002", str(token.pk)], "name": ["plant-a"], "username": ["someone"]},
    }


# Loading the schema needs no database: drf-spectacular builds it from the views.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application)


def _with_real_objects(case, path_values: dict[str, list[str]]) -> bool:
    """Point the case's path parameters at seeded objects (the generated ones are mostly 404s)."""
    if not case.path_parameters:
        return False
    path = case.operation.path
    for key in case.path_parameters:
        values = path_values.get(key, [])
        if key == "id" and "enrollment-tokens" in path:
            values = values[-1:]
        elif key == "id":
            values = values[:-1]
        if not values:
            return False
        case.path_parameters[key] = values[hash(repr(case.body)) % len(values)]
    return True


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_with_a_server_error(case, seeded_world, caplog):
    headers = {"Authorization": f"Token {seeded_world['token']}"}
    case.call_and_validate(headers=headers, checks=[not_a_server_error])
    if _with_real_objects(case, seeded_world["path_values"]):
        case.call_and_validate(headers=headers, checks=[not_a_server_error])
    # The error handler turns a database DataError into a 400 as a safety net; for the fuzz run it is
    # still a bug (validation let the value through), so it fails here for the fleet and devices
    # endpoints. The policy endpoints are left to their own suite (tests/policies) for now.
    if not any(part in case.operation.path for part in ("polic", "llm-usage")):
        refused = [r.getMessage() for r in caplog.records if r.name == "fleet.api.errors"]
        assert not refused, refused
