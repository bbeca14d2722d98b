"""The device's MQTT session: mTLS to the broker, LWT, reconnect with exponential backoff and jitter.

The session is driven by ``poll()`` from one thread (the agent's loop, or a simulator worker that
drives many sessions): connecting, reading, writing, keepalive and every callback happen in that thread,
so an SSL socket is never used from two threads at once. A fresh paho client is made for every
connection attempt: it rereads the certificate (renewals take effect at the next connection) and starts
with no in-flight state; unacknowledged messages are re-sent from the on-disk outbox instead.
"""

import logging
import random
import select
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from fleet_agent.protocol import device_topic

log = logging.getLogger(__name__)


@dataclass
class SessionSettings:
    keepalive_s: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_inflight: int = 100


def broker_address(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    tls = parsed.scheme in {"mqtts", "ssl", "tls"}
    return parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883), tls


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so a fleet that lost the broker
    at the same instant does not come back in lockstep."""
    ceiling = min(high, low * (2**attempt))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Session:
    def __init__(
        self,
        *,
        device_id: str,
        mqtt_url: str,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        will_payload: Callable[[], bytes],
        on_connected: Callable[[], None],
        on_disconnected: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_acked: Callable[[int], None],
        settings: SessionSettings | None = None,
        subscriptions: tuple[str, ...] = ("ota/assign", "policy"),
    ):
        self.device_id = device_id
        self.mqtt_url = mqtt_url
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.will_payload = will_payload
        self.on_connected, self.on_disconnected = on_connected, on_disconnected
        self.on_message, self.on_acked = on_message, on_acked
        self.settings = settings or SessionSettings()
        self.subscriptions = subscriptions
        self.client: mqtt.Client | None = None
        self.connected = False
        self.connected_since: float | None = None
        self.attempt = 0
        self.next_attempt = 0.0
        self.last_error = ""
        self._stopping = False

    def topic(self, leaf: str) -> str:
        return device_topic(self.device_id, leaf)

    # -- driving -------------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> None:
        """One step: connect when due, else move bytes and run callbacks. Waits at most ``timeout``."""
        if self._stopping:
            return
        if self.client is None:
            if time.monotonic() >= self.next_attempt:
                self._connect()
            elif timeout:
                time.sleep(min(timeout, max(0.0, self.next_attempt - time.monotonic())))
            return
        rc = self._io(self.client, timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS and self.client is not None:
            self._lost(f"connection lost ({mqtt.error_string(rc)})")

    @staticmethod
    def _io(client: mqtt.Client, timeout: float) -> int:
        """paho's loop() step, on poll() instead of select(): select() fails on descriptors above 1023,
        which a simulator with hundreds of devices (socket + SQLite files each) reaches quickly."""
        sock = client.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        if getattr(sock, "pending", None) and sock.pending():
            flags = select.POLLIN  # TLS already holds decrypted bytes the kernel no longer sees
        else:
            poller = select.poll()
            poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
            ready = poller.poll(int(timeout * 1000))
            flags = ready[0][1] if ready else 0
        if flags & (select.POLLIN | select.POLLERR | select.POLLHUP):
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
                return rc or mqtt.MQTT_ERR_CONN_LOST
        if flags & select.POLLOUT or client.want_write():
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def _connect(self) -> None:
        host, port, tls = broker_address(self.mqtt_url)
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(self.settings.max_inflight)
        client.max_queued_messages_set(0)
        client.connect_timeout = self.settings.connect_timeout_s
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = lambda _c, _u, message: self.on_message(message.topic, message.payload)
        client.on_publish = lambda _c, _u, mid, _reason, _props: self.on_acked(mid)
        # A fresh seq for every will: the platform stores each (device, seq) once.
        client.will_set(self.topic("status"), self.will_payload(), qos=1, retain=True)
        try:
            if tls:
                client.tls_set_context(self._tls_context())
            client.connect(host, port, keepalive=self.settings.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._schedule_retry(f"connect to {host}:{port} failed: {exc}")
            return
        self.client = client

    def _handle_connect(self, client, _userdata, _flags, reason, _props) -> None:
        if reason != 0:
            self.last_error = f"broker refused the connection: {reason}"
            client.disconnect()
            return
        self.connected = True
        self.connected_since = time.time()
        self.attempt = 0
        self.last_error = ""
        for leaf in self.subscriptions:
            client.subscribe(self.topic(leaf), qos=1)
        self.on_connected()

    def _handle_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        if self.client is not None:
            self._lost(f"disconnected: {reason}")

    def _lost(self, why: str) -> None:
        was_connected = self.connected
        client, self.client = self.client, None
        self.connected = False
        self.connected_since = None
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # noqa: S110 - the socket is already gone; nothing to clean
                pass
        self._schedule_retry(why)
        if was_connected:
            self.on_disconnected()

    def _schedule_retry(self, why: str) -> None:
        self.last_error = why
        delay = backoff_delay(self.attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        self.attempt += 1
        self.next_attempt = time.monotonic() + delay
        log.info("%s: %s; retrying in %.1fs", self.device_id, why, delay)

    # -- sending -------------------------------------------------------------------------------------
    def publish(self, leaf: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish QoS 1; returns the mid whose PUBACK will call on_acked, or None when not connected."""
        if not self.connected or self.client is None:
            return None
        info = self.client.publish(self.topic(leaf), payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def close(self, *, final_payload: bytes | None = None, timeout: float = 2.0) -> None:
        """Disconnect cleanly; ``final_payload`` (the ``offline`` status) is published first, since a clean
        DISCONNECT suppresses the will."""
        self._stopping = True
        client = self.client
        if client is None:
            return
        if self.connected and final_payload is not None:
            info = client.publish(self.topic("status"), final_payload, qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline:
                if self._io(client, 0.1) != mqtt.MQTT_ERR_SUCCESS:
                    break
        self.client = None  # first: the disconnect callback must not schedule a reconnect
        self.connected = False
        client.disconnect()
