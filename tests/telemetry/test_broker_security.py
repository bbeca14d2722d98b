"""The broker's rules, proven against the real Mosquitto with the real configuration (docker/mosquitto/).

Every refusal test has a control in the same test (the allowed action works), so a broker that accepts
nothing cannot pass it.
"""

import time

import pytest
from cryptography import x509
from django.conf import settings

from devices import services as device_services
from fleet import celery_app
from fleet.mqtt import publish_retained
from fleet.services import Actor
from tests.factories import make_device
from tests.mqtt_helpers import connect_client


def connect_device(result, key, *, client_id=None, **kwargs):
    return connect_client(client_id=client_id or result.device.id, cert_pem=result.certificate_pem, key=key, **kwargs)


def connect_platform(role: str, client_id: str):
    tls = settings.MQTT_TLS_DIR
    return connect_client(
        client_id=client_id,
        cert_pem=(tls / f"{role}.crt").read_text(),
        key=_load_key(tls / f"{role}.key"),
        url=settings.MQTT_PLATFORM_URL,
    )


def _load_key(path):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), password=None)


@pytest.fixture
def two_devices(mqtt_broker):
    a = make_device("cam-alpha")
    b = make_device("cam-bravo")
    clients = []

    def connect(which, **kwargs):
        client = connect_device(*(a if which == "a" else b), **kwargs)
        clients.append(client)
        return client

    yield a, b, connect, clients
    for client in clients:
        client.close()


@pytest.fixture
def observer(mqtt_broker):
    client = connect_platform("platform-ingest", "observer-test")
    assert client.connected.is_set() and client.connect_reason == 0
    for leaf in ("telemetry", "status", "heartbeat"):
        assert client.subscribe(f"devices/+/{leaf}")[0] < 128
    yield client
    client.close()


def payloads(messages):
    return [(m.topic, m.payload) for m in messages]


def test_device_cannot_publish_to_another_devices_topic(two_devices, observer):
    _a, _b, connect, _ = two_devices
    device_a = connect("a")
    assert device_a.connect_reason == 0
    device_a.publish("devices/cam-bravo/telemetry", b"forged")
    device_a.publish("devices/cam-alpha/telemetry", b"own")
    assert payloads(observer.messages()) == [("devices/cam-alpha/telemetry", b"own")]


def test_device_cannot_receive_another_devices_topics(two_devices):
    _a, _b, connect, _ = two_devices
    device_a = connect("a")
    device_b = connect("b")
    device_a.subscribe("devices/cam-bravo/policy")
    device_a.subscribe("devices/#")
    device_b.subscribe("devices/cam-bravo/policy")
    publish_retained([("devices/cam-bravo/policy", b"policy-for-b")])
    assert payloads(device_b.messages()) == [("devices/cam-bravo/policy", b"policy-for-b")]
    assert device_a.messages(wait=0.5) == []


def test_will_message_cannot_land_in_another_devices_namespace(two_devices, observer):
    _a, _b, connect, _ = two_devices
    forged = connect("a", will=("devices/cam-bravo/status", b"offline"))
    honest = connect("b", will=("devices/cam-bravo/status", b"offline"))
    for client in (forged, honest):
        if client.connected.is_set():
            client.client.socket().close()  # die without DISCONNECT: the broker sends the will
    assert payloads(observer.messages(wait=2.0)) == [("devices/cam-bravo/status", b"offline")]


def test_claiming_another_devices_client_id_does_not_disconnect_it(two_devices):
    _a, _b, connect, _ = two_devices
    device_b = connect("b")
    assert device_b.connect_reason == 0
    device_b.subscribe("devices/cam-bravo/ota/assign")
    impostor = connect("a", client_id="cam-bravo")
    assert impostor.connect_reason == 0  # it connects, but as itself (client id = its CN)
    time.sleep(0.5)
    assert not device_b.disconnected.is_set()
    publish_retained([("devices/cam-bravo/ota/assign", b"pointer")])
    assert payloads(device_b.messages()) == [("devices/cam-bravo/ota/assign", b"pointer")]
    # Control: the same device id connecting again does take the session over (MQTT semantics).
    connect("b")
    assert device_b.disconnected.wait(3)


def test_device_cannot_write_its_own_policy_or_assignment(two_devices):
    _a, _b, connect, _ = two_devices
    device_a = connect("a")
    device_a.subscribe("devices/cam-alpha/policy")
    device_a.subscribe("devices/cam-alpha/ota/assign")
    device_a.publish("devices/cam-alpha/policy", b"self-made", retain=True)
    device_a.publish("devices/cam-alpha/ota/assign", b"self-made", retain=True)
    assert device_a.messages(wait=0.5) == []
    publish_retained([("devices/cam-alpha/policy", b"from-platform")])
    assert payloads(device_a.messages()) == [("devices/cam-alpha/policy", b"from-platform")]


def test_revoked_certificate_is_refused(mqtt_broker, django_capture_on_commit_callbacks):
    result, key = make_device("cam-revoked")
    before = connect_device(result, key)
    assert before.connect_reason == 0
    before.close()
    serial = x509.load_pem_x509_certificate(result.certificate_pem.encode()).serial_number
    crl_path = settings.MQTT_TLS_DIR / "device-crl.pem"
    assert x509.load_pem_x509_crl(crl_path.read_bytes()).get_revoked_certificate_by_serial_number(serial) is None
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            device_services.device_revoke(actor=Actor.system("tests"), device=result.device, reason="stolen")
    finally:
        celery_app.conf.task_always_eager = False
    # The revocation rewrote the broker's CRL (devices.crl_refresh, enqueued on commit) ...
    assert x509.load_pem_x509_crl(crl_path.read_bytes()).get_revoked_certificate_by_serial_number(serial)
    # ... and once the broker re-reads it, the certificate is refused.
    mqtt_broker.reload()
    after = connect_device(result, key)
    assert not (after.connected.is_set() and after.connect_reason == 0)
    after.close()


def test_client_without_certificate_is_refused(mqtt_broker):
    anonymous = connect_client(client_id="nobody", cert_pem=None)
    assert not (anonymous.connected.is_set() and anonymous.connect_reason == 0)
    anonymous.close()


def test_device_certificate_is_refused_on_the_platform_listener(mqtt_broker):
    result, key = make_device("cam-sneaky")
    sneaky = connect_device(result, key, url=settings.MQTT_PLATFORM_URL)
    assert not (sneaky.connected.is_set() and sneaky.connect_reason == 0)
    sneaky.close()
    # Control: the platform's own certificate is accepted there.
    platform = connect_platform("platform-ingest", "control")
    assert platform.connect_reason == 0
    platform.close()
