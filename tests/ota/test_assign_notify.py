"""Assignment pointers end to end: a rollout's commit enqueues ota.tasks.publish_assignments, which
publishes retained QoS 1 pointers through the platform's MQTT client to the real Mosquitto broker,
where the device (with its enrollment certificate) receives its own and only its own."""

import json

import pytest

from ota import rollouts
from tests.factories import make_device
from tests.mqtt_helpers import connect_client
from tests.ota.conftest import ACTOR, release


@pytest.fixture
def no_broker():
    """Override the suite's recorder: these tests publish to the real broker."""
    return None


def subscribe_as(result, key):
    client = connect_client(client_id=result.device.id, cert_pem=result.certificate_pem, key=key)
    assert client.connect_reason == 0
    client.subscribe(f"devices/{result.device.id}/ota/assign")
    return client


def test_rollout_start_publishes_retained_pointers_to_the_devices(
    mqtt_broker, update_repo, django_capture_on_commit_callbacks
):
    one, key_one = make_device("cam-notify-1", hardware_class="rpi4")
    two, key_two = make_device("cam-notify-2", hardware_class="jetson")  # not targeted: other hardware
    artifact = release(hardware=("rpi4",))
    rollout = rollouts.rollout_create(actor=ACTOR, name="n", artifact=artifact, selector={}, stages=[{"share": 1.0}])
    with django_capture_on_commit_callbacks(execute=True):
        rollouts.rollout_start(actor=ACTOR, rollout=rollout)

    # Retained: a device that connects after the publish still gets its pointer.
    device = subscribe_as(one, key_one)
    messages = device.messages(wait=3)
    device.close()
    assert [m.topic for m in messages] == ["devices/cam-notify-1/ota/assign"]
    assert messages[0].retain
    body = json.loads(messages[0].payload)
    assert body["v"] == 1 and body["refresh"] == "director" and body["target"] == artifact.target_path

    other = subscribe_as(two, key_two)
    assert other.messages(wait=1) == []
    other.close()
