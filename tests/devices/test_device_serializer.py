"""The device list's hand-written rendering matches what DRF renders from the declared fields."""

import datetime as dt

import pytest
from django.utils import timezone

from devices import selectors, services
from devices.api.serializers import DeviceDetailSerializer, DeviceSerializer
from fleet.services import Actor
from tests.factories import make_device, make_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def devices():
    group = services.group_create(actor=Actor.system("tests"), name="plant-a")
    make_device("cam-1", token=make_token(group=group, tags=["b-tag", "a-tag"]), hardware_class="rpi4")
    make_device("cam-2", token=make_token(auto_accept=False))
    services.device_mark_seen(device_id="cam-1", at=timezone.now() - dt.timedelta(seconds=3.25), online=True)
    services.device_mark_seen(device_id="cam-2", at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))


@pytest.mark.parametrize("device_id", ["cam-1", "cam-2"])
def test_fast_rendering_equals_drf_rendering(devices, device_id):
    device = selectors.device_detail().get(pk=device_id)
    serializer = DeviceSerializer()
    assert serializer.to_representation(device) == serializer.generic_representation(device)
    detail = DeviceDetailSerializer()
    assert detail.to_representation(device) == detail.generic_representation(device)


def test_device_without_group_or_last_seen(db):
    make_device("cam-3")
    device = selectors.device_list().get(pk="cam-3")
    body = DeviceSerializer().to_representation(device)
    assert body["group"] is None and body["last_seen_at"] is None
    assert body == DeviceSerializer().generic_representation(device)
