"""The device list (filters, cursor pagination), PATCH and bulk changes, with their audit events."""

import datetime as dt

import pytest
from django.utils import timezone

from devices import services
from devices.models import Device, DeviceStatus
from fleet.models import AuditEvent
from fleet.services import Actor
from tests.factories import make_device, make_token

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
NOW = timezone.now()


@pytest.fixture
def fleet():
    """Six devices across two groups, tags, hardware classes, statuses and last-seen times."""
    plant_a = services.group_create(actor=SYSTEM, name="plant-a")
    plant_b = services.group_create(actor=SYSTEM, name="plant-b")
    token_a = make_token(group=plant_a, tags=["camera"])
    token_b = make_token(group=plant_b)
    pending = make_token(auto_accept=False)
    make_device("cam-a1", token=token_a, hardware_class="rpi4")
    make_device("cam-a2", token=token_a, hardware_class="jetson")
    make_device("sensor-b1", token=token_b, hardware_class="rpi4")
    make_device("sensor-b2", token=token_b, hardware_class="rpi4")
    make_device("new-1", token=pending, hardware_class="jetson")
    make_device("gone-1", token=token_b, hardware_class="rpi4")
    services.device_revoke(actor=SYSTEM, device=Device.objects.get(pk="gone-1"))
    services.device_mark_seen(device_id="cam-a1", at=NOW - dt.timedelta(hours=2))
    services.device_mark_seen(device_id="sensor-b1", at=NOW - dt.timedelta(minutes=5))


def listed_ids(client, query: str = "") -> list[str]:
    response = client.get(f"/api/v1/devices/?{query}")
    assert response.status_code == 200, response.content
    return [d["id"] for d in response.json()["results"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["cam-a1", "cam-a2", "gone-1", "new-1", "sensor-b1", "sensor-b2"]),
        ("group=plant-a", ["cam-a1", "cam-a2"]),
        ("group=plant-b", ["gone-1", "sensor-b1", "sensor-b2"]),
        ("tag=camera", ["cam-a1", "cam-a2"]),
        ("status=pending", ["new-1"]),
        ("status=revoked", ["gone-1"]),
        ("status=active", ["cam-a1", "cam-a2", "sensor-b1", "sensor-b2"]),
        ("hardware_class=jetson", ["cam-a2", "new-1"]),
        ("id_prefix=sensor-", ["sensor-b1", "sensor-b2"]),
        ("group=plant-b&hardware_class=rpi4&status=active", ["sensor-b1", "sensor-b2"]),
        ("group=nowhere", []),
    ],
)
def test_device_list_filters(viewer_api, fleet, query, expected):
    assert listed_ids(viewer_api, query) == expected


def test_device_list_filters_on_last_seen(viewer_api, fleet):
    hour_ago = (NOW - dt.timedelta(hours=1)).isoformat()
    assert listed_ids(viewer_api, f"last_seen_after={hour_ago.replace('+', '%2B')}") == ["sensor-b1"]
    assert listed_ids(viewer_api, f"last_seen_before={hour_ago.replace('+', '%2B')}") == ["cam-a1"]


@pytest.mark.parametrize(
    "query", ["status=sleeping", "last_seen_after=yesterday", "last_seen_before=0001-01-01T00:00:00%2B05:00"]
)
def test_bad_filter_value_is_a_400_naming_the_field(viewer_api, query):
    response = viewer_api.get(f"/api/v1/devices/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()["error"]["fields"]


def test_cursor_pagination_walks_every_device_once_in_id_order(viewer_api, fleet):
    seen, url, pages = [], "/api/v1/devices/?page_size=4", 0
    while url:
        body = viewer_api.get(url).json()
        seen += [d["id"] for d in body["results"]]
        url, pages = body["next"], pages + 1
    assert pages == 2
    assert seen == sorted(Device.objects.values_list("id", flat=True))


def test_cursor_pagination_works_under_a_filter(viewer_api, fleet):
    first = viewer_api.get("/api/v1/devices/?status=active&page_size=3").json()
    assert [d["id"] for d in first["results"]] == ["cam-a1", "cam-a2", "sensor-b1"]
    second = viewer_api.get(first["next"]).json()
    assert [d["id"] for d in second["results"]] == ["sensor-b2"]
    assert second["next"] is None


def test_bad_cursor_is_a_404_with_the_error_body(viewer_api, fleet):
    response = viewer_api.get("/api/v1/devices/?cursor=garbage")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_patch_changes_name_group_tags_and_audits_before_after(operator_api, fleet):
    response = operator_api.patch(
        "/api/v1/devices/cam-a1/", {"name": "door", "group": "plant-b", "tags": ["door", "outdoor"]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["group"], body["tags"]) == ("door", "plant-b", ["door", "outdoor"])
    event = AuditEvent.objects.get(action="device.update", object_id="cam-a1")
    assert event.actor == f"user:{operator_api.user.username}"
    assert event.before["group"] == "plant-a" and event.before["tags"] == ["camera"]
    assert event.after["group"] == "plant-b" and event.after["tags"] == ["door", "outdoor"]


def test_patch_group_null_ungroups(operator_api, fleet):
    response = operator_api.patch("/api/v1/devices/cam-a1/", {"group": None}, format="json")
    assert response.json()["group"] is None


def test_patch_unknown_group_is_a_400(operator_api, fleet):
    response = operator_api.patch("/api/v1/devices/cam-a1/", {"group": "nowhere"}, format="json")
    assert response.status_code == 400
    assert "group" in response.json()["error"]["fields"]
    assert Device.objects.get(pk="cam-a1").group.name == "plant-a"


def test_patch_that_changes_nothing_writes_no_audit_event(operator_api, fleet):
    operator_api.patch("/api/v1/devices/cam-a1/", {"name": "cam-a1"}, format="json")
    assert not AuditEvent.objects.filter(action="device.update").exists()


def test_bulk_tag_untag_and_regroup(operator_api, fleet):
    response = operator_api.post(
        "/api/v1/devices/bulk/",
        {"device_ids": ["cam-a1", "sensor-b1"], "add_tags": ["pilot"], "remove_tags": ["camera"], "group": "plant-b"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"updated": 2}
    assert listed_ids(operator_api, "tag=pilot") == ["cam-a1", "sensor-b1"]
    assert listed_ids(operator_api, "tag=camera") == ["cam-a2"]
    assert listed_ids(operator_api, "group=plant-a") == ["cam-a2"]
    event = AuditEvent.objects.get(action="device.bulk_update")
    assert event.after["device_ids"] == ["cam-a1", "sensor-b1"]
    assert event.after["group"] == "plant-b"


def test_bulk_with_an_unknown_id_is_a_404_and_changes_nothing(operator_api, fleet):
    response = operator_api.post(
        "/api/v1/devices/bulk/", {"device_ids": ["cam-a1", "no-such-device"], "add_tags": ["pilot"]}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "device_not_found"
    assert listed_ids(operator_api, "tag=pilot") == []
    assert not AuditEvent.objects.filter(action="device.bulk_update").exists()


def test_approve_makes_pending_device_active_with_audit(operator_api, fleet):
    response = operator_api.post("/api/v1/devices/new-1/approve/")
    assert response.status_code == 200
    assert response.json()["certificate"]["serial"]
    event = AuditEvent.objects.get(action="device.approve", object_id="new-1")
    assert (event.before["status"], event.after["status"]) == ("pending", "active")


def test_revoke_is_audited_with_the_revoked_certificates(operator_api, fleet):
    response = operator_api.post("/api/v1/devices/cam-a1/revoke/", {"reason": "lost"}, format="json")
    assert response.json()["status"] == DeviceStatus.REVOKED
    event = AuditEvent.objects.get(action="device.revoke", object_id="cam-a1")
    assert event.before == {"status": "active"}
    assert event.after["reason"] == "lost"
    assert len(event.after["revoked_certificates"]) == 1


def test_unknown_device_is_a_404_with_error_body(viewer_api):
    response = viewer_api.get("/api/v1/devices/no-such-device/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
