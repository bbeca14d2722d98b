"""The platform's own MQTT clients: ingest workers and the publisher of assignments and policies.

They connect to the broker's platform listener (MQTT_PLATFORM_URL) with certificates from the platform
CA (fleet/broker.py), as ``platform-ingest`` or ``platform-publisher``; the broker's ACL gives each only
what its role needs. Unlike devices, platform clients choose their client id, so several processes of one
role can be connected at once (e.g. ingest workers on a shared subscription).
"""

import os
import socket
import ssl
import threading
import uuid
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from django.conf import settings

PUBLISH_TIMEOUT_S = 10.0


class MqttUnavailable(RuntimeError):
    """The broker could not be reached or did not acknowledge in time; the caller retries."""


def broker_address(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    tls = parsed.scheme in {"mqtts", "ssl", "tls"}
    return parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883), tls


def platform_client(role: str, *, client_id: str | None = None, clean_start: bool = True) -> mqtt.Client:
    """A configured (not yet connected) paho client for a platform role."""
    tls_dir = settings.MQTT_TLS_DIR
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv311,
        clean_session=clean_start,
    )
    _host, _port, tls = broker_address(settings.MQTT_PLATFORM_URL)
    if tls:
        client.tls_set(
            ca_certs=str(tls_dir / "device-ca.pem"),
            certfile=str(tls_dir / f"{role}.crt"),
            keyfile=str(tls_dir / f"{role}.key"),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def connect(client: mqtt.Client, *, keepalive: int = 30) -> None:
    host, port, _tls = broker_address(settings.MQTT_PLATFORM_URL)
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as exc:
        raise MqttUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc


class _Publisher:
    """One long-lived publisher connection per process (Celery worker, web process), shared by threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    def _connected_client(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        if self._client is not None:
            self._client.loop_stop()
        client = platform_client("platform-publisher")
        connected = threading.Event()
        client.on_connect = lambda c, userdata, flags, reason, props: connected.set()
        connect(client)
        client.loop_start()
        if not connected.wait(PUBLISH_TIMEOUT_S):
            client.loop_stop()
            raise MqttUnavailable("the broker did not accept the publisher's connection in time")
        self._client = client
        return client

    def publish_retained(self, messages: list[tuple[str, bytes]]) -> None:
        with self._lock:
            client = self._connected_client()
            infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
            for info in infos:
                try:
                    info.wait_for_publish(PUBLISH_TIMEOUT_S)
                except (RuntimeError, ValueError) as exc:
                    raise MqttUnavailable(f"publish failed: {exc}") from exc
                if not info.is_published():
                    raise MqttUnavailable("the broker did not acknowledge a publish in time")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
                self._client = None


_publisher = _Publisher()


def publish_retained(messages: list[tuple[str, bytes]]) -> None:
    """Publish retained QoS 1 messages (topic, payload) and return once the broker acknowledged each.

    Raises MqttUnavailable when it cannot; callers (Celery tasks) retry, and since the messages are
    retained state (the newest assignment or policy), publishing the same message again is harmless.
    """
    if messages:
        _publisher.publish_retained(messages)


def close_publisher() -> None:
    _publisher.close()
