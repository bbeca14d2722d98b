"""MQTT clients for tests: a device connecting with its enrollment certificate, like the agent does."""

import queue
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from django.conf import settings

from fleet.mqtt import broker_address
from fleet_agent.identity import private_key_pem


@dataclass
class TestClient:
    """A connected paho client that records what it receives and how its connection ended."""

    client: mqtt.Client
    received: "queue.Queue[mqtt.MQTTMessage]" = field(default_factory=queue.Queue)
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    connect_reason: object = None
    suback: "queue.Queue[list]" = field(default_factory=queue.Queue)

    def subscribe(self, topic: str, qos: int = 1) -> list:
        self.client.subscribe(topic, qos=qos)
        return self.suback.get(timeout=5)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        return info

    def messages(self, wait: float = 1.0) -> list:
        out = []
        try:
            out.append(self.received.get(timeout=wait))
            while True:
                out.append(self.received.get(timeout=0.2))
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _tls_files(cert_pem: str | None, key) -> tuple[str | None, str | None]:
    if cert_pem is None:
        return None, None
    folder = Path(tempfile.mkdtemp(prefix="mqtt-client-"))
    (folder / "cert.pem").write_text(cert_pem)
    (folder / "key.pem").write_bytes(private_key_pem(key))
    return str(folder / "cert.pem"), str(folder / "key.pem")


def connect_client(
    *,
    client_id: str,
    cert_pem: str | None,
    key=None,
    url: str | None = None,
    will: tuple[str, bytes] | None = None,
    ca_file: str | None = None,
    timeout: float = 5.0,
) -> TestClient:
    """Connect with a client certificate (or none) and wait until the broker answers or drops us."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
    )
    certfile, keyfile = _tls_files(cert_pem, key)
    context = ssl.create_default_context(cafile=ca_file or str(settings.MQTT_TLS_DIR / "device-ca.pem"))
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    client.tls_set_context(context)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    test_client = TestClient(client=client)

    def on_connect(c, userdata, flags, reason, props):
        test_client.connect_reason = reason
        test_client.connected.set()

    def on_disconnect(c, userdata, flags, reason, props):
        test_client.disconnected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = lambda c, userdata, message: test_client.received.put(message)
    client.on_subscribe = lambda c, userdata, mid, reasons, props: test_client.suback.put(reasons)
    host, port, _tls = broker_address(url or settings.MQTT_URL)
    try:
        client.connect(host, port, keepalive=10)
    except (ssl.SSLError, OSError):
        test_client.disconnected.set()
        return test_client
    client.loop_start()
    deadline = threading.Event()
    deadline.wait(0)
    test_client.connected.wait(timeout)
    return test_client
