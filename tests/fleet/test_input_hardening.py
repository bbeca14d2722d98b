"""Values the database cannot store or compare (NUL bytes, malformed cursors, huge numbers) are 4xx
answers, wherever they enter: body, path, query string, headers. Found by the schema fuzz run."""

import base64
import io
from urllib.parse import quote, urlencode

import pytest
from rest_framework.test import APIClient

from devices import services
from fleet.services import Actor
from tests.factories import make_device

pytestmark = pytest.mark.django_db


def cursor(position: str) -> str:
    return quote(base64.b64encode(urlencode({"p": position}).encode()).decode())


@pytest.fixture
def world():
    services.group_create(actor=Actor.system("tests"), name="plant-a")
    make_device("cam-1")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/enrollment-tokens/", {"name": "t", "group": "\x00plant"}),
        ("patch", "/api/v1/devices/cam-1/", {"group": "pl\x00ant"}),
        ("post", "/api/v1/devices/bulk/", {"device_ids": ["cam-1"], "group": "\x00"}),
    ],
)
def test_nul_in_a_related_name_is_a_400(admin_api, world, method, path, body):
    response = getattr(admin_api, method)(path, body, format="json")
    assert response.status_code == 400, response.content
    assert "group" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices/cam%00-1/",
        "/api/v1/groups/plant%00/",
        "/api/v1/operators/x%00y/",
        "/api/v1/enrollment-tokens/99999999999999999999999/",
        "/api/v1/enrollment-tokens/abc/",
    ],
)
def test_unstorable_value_in_the_path_is_a_404(admin_api, world, path):
    response = admin_api.get(path)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("path", "position"),
    [
        ("/api/v1/devices/", "cam\x00"),
        ("/api/v1/operators/", "not-a-number"),
        ("/api/v1/audit-events/", "99999999999999999999999999"),
        ("/api/v1/enrollment-tokens/", "\x00"),
        ("/api/v1/groups/", "1.5"),
    ],
)
def test_cursor_with_an_impossible_position_is_a_404(admin_api, world, path, position):
    response = admin_api.get(f"{path}?cursor={cursor(position)}")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


def test_nul_in_an_api_token_is_a_401(world):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token abc\x00def")
    assert client.get("/api/v1/devices/").status_code == 401


def test_a_value_the_database_refuses_is_a_400_not_a_500(admin_api, monkeypatch):
    """The safety net behind validation: a DataError raised in a view becomes a 400 `invalid_value`."""
    from django.db import DataError

    from fleet.api import views

    def refuse(*args, **kwargs):
        raise DataError("value out of range")

    monkeypatch.setattr(views.OperatorSerializer, "to_representation", refuse)
    response = admin_api.get(f"/api/v1/operators/{admin_api.user.username}/")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_value"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/policies/", {"scope": "fleet", "document": {"allow": [{"task": "a\x00b"}]}}, "document"),
        ("/api/v1/policies/", {"scope": "fleet", "document": {"k\x00ey": 1}}, "document"),
        ("/api/v1/policies/", {"scope": "group", "group": "pl\x00ant", "document": {}}, "group"),
        ("/api/v1/policies/", {"scope": "device", "device": "cam\x00-1", "document": {}}, "device"),
    ],
)
def test_nul_in_a_policy_is_a_400_refused_before_the_database(admin_api, world, caplog, path, body, field):
    response = admin_api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not [r for r in caplog.records if r.name == "fleet.api.errors"]  # validation, not a DataError


@pytest.mark.parametrize(
    ("text", "where"),
    [('{"image": "a\\u0000b"}', "image"), ('{"frames": [1, "\\u0000"]}', "frames[1]"), ('"\\u0000"', "(value)")],
)
def test_unstorable_self_test_json_in_an_upload_is_a_400_naming_the_place(admin_api, world, caplog, text, where):
    body = {
        "file": io.BytesIO(b"weights"),
        "name": "detector",
        "version": "1.0.0",
        "runtime": "onnxruntime",
        "hardware_classes": ["rpi5"],
        "self_test_input": text,
    }
    response = admin_api.post("/api/v1/ota/artifacts/", body, format="multipart")
    assert response.status_code == 400, response.content
    [error] = response.json()["error"]["fields"]["self_test_input"]
    assert error["code"] == "unstorable" and f"at {where}." in error["message"]
    assert not [r for r in caplog.records if r.name == "fleet.api.errors"]


def test_a_body_over_the_upload_limit_is_a_413_in_the_error_shape(anon_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = anon_api.post("/api/v1/enroll/", {"token": "x" * 2000, "csr": "y"}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_form_with_too_many_fields_is_a_400_in_the_error_shape(admin_api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    body = {"name": "detector", **{f"extra{n}": "1" for n in range(20)}}
    response = admin_api.post("/api/v1/ota/artifacts/", body, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
