"""Signed distribution: the effective policy goes retained to devices/{id}/policy on the real broker,
signed with the platform's key (encrypted at rest), and the device verifies it with the key it got at
enrollment."""

import json

import pytest
from django.conf import settings

from devices.models import DeviceGroup
from fleet.celery import app as celery_app
from fleet.models import AuditEvent
from fleet_agent.identity import build_csr_pem, generate_private_key
from fleet_agent.policy import PolicyKeeper
from fleet_agent.policy.signature import load_public_key
from policies import notify, services, tasks
from policies.models import PolicySigningKey, PublishedPolicy
from policies.signing import policy_public_key_pem
from tests.factories import make_device, make_token
from tests.mqtt_helpers import connect_client
from tests.policies.conftest import SYSTEM, make_policy


@pytest.fixture
def eager_celery():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def keeper_for(device_id: str) -> PolicyKeeper:
    return PolicyKeeper(public_key=load_public_key(policy_public_key_pem()), device_id=device_id)


@pytest.mark.django_db
def test_enrollment_hands_the_device_the_policy_public_key(anon_api):
    key = generate_private_key()
    body = anon_api.post(
        "/api/v1/enroll/", {"token": make_token(), "csr": build_csr_pem(key, "cam-pk-1")}, format="json"
    ).json()
    assert body["policy_public_key"] == policy_public_key_pem()
    load_public_key(body["policy_public_key"])  # an Ed25519 key


@pytest.mark.django_db
def test_policy_key_is_encrypted_at_rest():
    policy_public_key_pem()
    row = PolicySigningKey.objects.get(active=True)
    assert "ENCRYPTED PRIVATE KEY" in row.encrypted_private_key_pem
    assert settings.KEY_ENCRYPTION_SECRET not in row.encrypted_private_key_pem


@pytest.mark.django_db
def test_signed_policy_verifies_and_versions_only_move_on_change():
    make_policy()
    result, _ = make_device("cam-sign-1")
    messages = notify.sign_device_policies([result.device.pk])
    assert [topic for topic, _ in messages] == ["devices/cam-sign-1/policy"]
    keeper = keeper_for("cam-sign-1")
    assert keeper.offer(messages[0][1])
    assert keeper.payload["policy"]["data_classes"]["health"] == "never"
    assert notify.sign_device_policies([result.device.pk]) == []  # nothing changed: nothing sent
    [event] = AuditEvent.objects.filter(action="policy.publish")
    assert event.after["versions"] == {"cam-sign-1": 1}
    # Another device's policy does not verify for this one.
    other, _ = make_device("cam-sign-2")
    assert not keeper.offer(notify.sign_device_policies([other.device.pk])[0][1])
    assert keeper.last_error.code == "wrong_device"


def test_policy_change_reaches_the_device_retained_over_mqtt(mqtt_broker, eager_celery):
    result, key = make_device("cam-mqtt-1")
    policy = make_policy()
    assert notify.publish_device_policies([result.device.pk]) == 1
    # The device connects afterwards and still gets it: the message is retained.
    client = connect_client(client_id="cam-mqtt-1", cert_pem=result.certificate_pem, key=key)
    try:
        client.subscribe("devices/cam-mqtt-1/policy")
        keeper = keeper_for("cam-mqtt-1")
        [message] = client.messages()
        assert keeper.offer(message.payload)
        assert keeper.version == 1
        # An operator tightens the fleet policy: the task fans out and the device gets version 2.
        document = json.loads(json.dumps(policy.document))
        document["data_classes"]["internal"] = "never"
        services.policy_update(actor=SYSTEM, policy=policy, document=document)
        tasks.publish_scope_policies(scope="fleet")  # what the on_commit hook enqueues
        [message] = client.messages()
        assert keeper.offer(message.payload)
        assert (keeper.version, keeper.payload["policy"]["data_classes"]["internal"]) == (2, "never")
    finally:
        client.close()


def test_group_change_republishes_only_that_groups_devices(mqtt_broker, eager_celery):
    make_policy()
    group = DeviceGroup.objects.create(name="line-1")
    members = [make_device(f"cam-line-{i}", token=make_token(group=group))[0].device.pk for i in range(3)]
    outsider = make_device("cam-elsewhere")[0].device.pk
    tasks.publish_scope_policies(scope="fleet")
    assert PublishedPolicy.objects.filter(version=1).count() == 4
    make_policy("group", {"budgets": {"day": {"requests": 5}}}, group=group)
    tasks.publish_scope_policies(scope="group", group_id=group.pk)
    versions = dict(PublishedPolicy.objects.values_list("device_id", "version"))
    assert versions == dict.fromkeys(members, 2) | {outsider: 1}


def test_policy_changes_republish_after_commit(mqtt_broker, eager_celery, django_capture_on_commit_callbacks):
    result, _ = make_device("cam-commit-1")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        policy = make_policy()
    assert not PublishedPolicy.objects.exists()  # nothing is sent before the change is committed
    for callback in callbacks:
        callback()
    assert PublishedPolicy.objects.get(device=result.device).version == 1
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_delete(actor=SYSTEM, policy=policy)
    # No fleet policy any more: the device is sent the deny-everything default (no rule means deny).
    published = PublishedPolicy.objects.get(device=result.device)
    assert published.version == 2
    assert keeper_for("cam-commit-1").offer(bytes(published.envelope))


def test_reconcile_publishes_new_devices_and_devices_moved_between_groups(mqtt_broker, eager_celery):
    make_policy()
    group = DeviceGroup.objects.create(name="quiet")
    make_policy("group", {"data_classes": {"public": "never"}}, group=group)
    tasks.reconcile_policies()
    result, _ = make_device("cam-late-1")  # enrolled after the last publish
    assert not PublishedPolicy.objects.filter(device=result.device).exists()
    tasks.reconcile_policies()
    assert PublishedPolicy.objects.get(device=result.device).version == 1
    result.device.group = group  # moved: no scope changed, but its effective policy did
    result.device.save()
    tasks.reconcile_policies()
    published = PublishedPolicy.objects.get(device=result.device)
    keeper = keeper_for("cam-late-1")
    assert keeper.offer(bytes(published.envelope))
    assert (keeper.version, keeper.payload["policy"]["data_classes"]["public"]) == (2, "never")
