"""Device groups CRUD through the API, with audit events."""

import pytest

from devices.models import Device, DeviceGroup
from fleet.models import AuditEvent
from tests.factories import make_device, make_token

pytestmark = pytest.mark.django_db


def test_create_list_read_update_delete(operator_api):
    created = operator_api.post("/api/v1/groups/", {"name": "plant-a", "description": "north"}, format="json")
    assert created.status_code == 201, created.content
    assert [g["name"] for g in operator_api.get("/api/v1/groups/").json()["results"]] == ["plant-a"]
    assert operator_api.get("/api/v1/groups/plant-a/").json()["description"] == "north"
    updated = operator_api.patch("/api/v1/groups/plant-a/", {"description": "south"}, format="json")
    assert updated.json()["description"] == "south"
    assert operator_api.delete("/api/v1/groups/plant-a/").status_code == 204
    assert not DeviceGroup.objects.exists()
    actions = list(AuditEvent.objects.filter(object_type="group").order_by("id").values_list("action", flat=True))
    assert actions == ["group.create", "group.update", "group.delete"]
    update = AuditEvent.objects.get(action="group.update")
    assert (update.before, update.after) == ({"description": "north"}, {"description": "south"})


def test_duplicate_name_is_a_409(operator_api):
    operator_api.post("/api/v1/groups/", {"name": "plant-a"}, format="json")
    again = operator_api.post("/api/v1/groups/", {"name": "plant-a"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "group_exists"
    assert again.json()["error"]["fields"]["name"]
    assert AuditEvent.objects.filter(action="group.create").count() == 1


@pytest.mark.parametrize("name", ["", "has space", "x" * 101, "ünï"])
def test_invalid_name_is_a_400(operator_api, name):
    response = operator_api.post("/api/v1/groups/", {"name": name}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]


def test_deleting_a_group_keeps_its_devices_ungrouped(operator_api):
    operator_api.post("/api/v1/groups/", {"name": "plant-a"}, format="json")
    make_device("cam-1", token=make_token(group=DeviceGroup.objects.get()))
    operator_api.delete("/api/v1/groups/plant-a/")
    assert Device.objects.get(pk="cam-1").group is None


def test_renaming_through_put_is_not_possible(operator_api):
    """The name is the group's key in URLs and filters; PUT changes the description only."""
    operator_api.post("/api/v1/groups/", {"name": "plant-a"}, format="json")
    response = operator_api.put("/api/v1/groups/plant-a/", {"name": "plant-z", "description": "d"}, format="json")
    assert response.status_code == 200
    assert DeviceGroup.objects.get().name == "plant-a"
