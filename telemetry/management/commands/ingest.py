"""`manage.py ingest`: the MQTT ingest worker (run several: they share the subscription).

Threads and who does what:
- paho's network thread (loop_start) reads the socket and puts every message, tagged with the
  connection it arrived on, into an in-process queue. It never touches the database.
- the main thread takes messages from the queue into a batch (flushed at --batch-rows rows,
  --batch-messages messages, or --batch-ms after the batch's first message), stores the batch in one
  transaction (telemetry.ingest.ingest_batch) and only then acknowledges its messages with
  ``client.ack(mid, 1)``. paho 2.x's ack() appends the PUBACK to a deque and wakes the network thread
  through its socket pair, which is safe from another thread while loop_start runs.

Guarantees: a message is acknowledged only after the transaction that stored it (or dead-lettered it)
committed. Messages of a connection that has since dropped are not acknowledged (their packet ids mean
nothing on the new connection); the broker redelivers them, and storage is idempotent on (device, seq).
On a database error the worker acknowledges nothing, waits and retries the same batch. SIGTERM: the
batch being written is finished and acknowledged (or, if the database is away, nothing is), the rest
is left to the broker, which keeps it in this worker's persistent session (clean_session false, stable
client id) or hands it to another worker of the shared subscription.
"""

import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from fleet.mqtt import MqttUnavailable, connect, platform_client
from fleet_agent import schemas
from telemetry import services
from telemetry.ingest import TRANSIENT_DB_ERRORS, InboundMessage, ingest_batch

log = logging.getLogger("telemetry.ingest")

SHARE_GROUP = "ingest"


def subscriptions(*, shared: bool = True) -> list[str]:
    """Shared (`$share/ingest/...`): workers split the load. Exclusive: one worker takes everything.

    Mosquitto 2.0 restores a persistent session's ordinary subscriptions after a broker restart but not
    its shared ones (tested: tests/telemetry/test_ingest_faults.py), so messages published after a broker
    restart and before a worker resubscribes reach nobody in shared mode. A single worker (the embedded
    run) therefore subscribes exclusively; see docs/operations.md.
    """
    prefix = f"$share/{SHARE_GROUP}/" if shared else ""
    return [f"{prefix}devices/+/{leaf}" for leaf in schemas.DEVICE_TO_PLATFORM_LEAVES]


@dataclass(frozen=True)
class Delivery:
    generation: int  # which connection it arrived on
    mid: int
    qos: int
    message: InboundMessage


HEALTH_TOUCH_INTERVAL_S = 5.0


class IngestWorker:
    def __init__(
        self,
        *,
        client_id: str,
        batch_rows: int,
        batch_messages: int,
        batch_ms: int,
        shared: bool = True,
        health_file: Path | None = None,
    ):
        self.client_id = client_id
        self.health_file = health_file
        self._health_touched = 0.0
        self.subscriptions = subscriptions(shared=shared)
        self.batch_rows = batch_rows
        self.batch_messages = batch_messages
        self.batch_s = batch_ms / 1000
        self.stop = threading.Event()
        self.inbox: queue.Queue[Delivery] = queue.Queue()
        self.generation = 0
        self._generation_lock = threading.Lock()  # on_connect (network thread) vs acks (main thread)
        self.acked_unflushed = 0  # acks sent since the counters were last written
        self.stored_messages = 0
        self.client = platform_client("platform-ingest", client_id=client_id, clean_start=False)
        self.client.manual_ack_set(True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- network thread ---

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        with self._generation_lock:
            self.generation += 1
        # The session is persistent, but subscribing again is harmless and covers a broker that lost it.
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        log.info("connected as %s (session present: %s)", self.client_id, flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        log.warning("disconnected from the broker: %s", reason)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage):
        self.inbox.put(
            Delivery(
                generation=self.generation,
                mid=message.mid,
                qos=message.qos,
                message=InboundMessage(topic=message.topic, payload=message.payload, received_at=timezone.now()),
            )
        )

    # --- main thread ---

    def _collect(self) -> list[Delivery]:
        """Wait for a first message (up to a second, to notice SIGTERM), then fill the batch until it is
        full or batch_ms have passed since that first message."""
        try:
            first = self.inbox.get(timeout=1.0)
        except queue.Empty:
            return []
        batch, rows = [first], _rows_of(first)
        deadline = time.monotonic() + self.batch_s
        while rows < self.batch_rows and len(batch) < self.batch_messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                delivery = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(delivery)
            rows += _rows_of(delivery)
        return batch

    def _store(self, batch: list[Delivery]) -> bool:
        """Store the batch, retrying while the database is away; False if stopped before it was stored."""
        delay = 0.5
        while True:
            try:
                close_old_connections()
                result = ingest_batch(
                    [d.message for d in batch], extra_counters={"messages_acked": self.acked_unflushed}
                )
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("database unavailable (%s); retrying the batch of %d in %.1fs", exc, len(batch), delay)
                close_old_connections()
                _drop_connection()
                if self.stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            self.acked_unflushed = 0
            try:
                services.devices_mark_seen(device_ids=result.devices_seen, at=timezone.now())
            except TRANSIENT_DB_ERRORS:
                # Presence is best effort; the batch itself is committed and gets acknowledged.
                log.warning("could not update last_seen_at for %d devices", len(result.devices_seen))
            return True

    def _ack(self, batch: list[Delivery]) -> None:
        with self._generation_lock:
            current = self.generation
            for delivery in batch:
                if delivery.qos > 0 and delivery.generation == current:
                    self.client.ack(delivery.mid, delivery.qos)
                    self.acked_unflushed += 1

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                connect(self.client)
                break
            except MqttUnavailable as exc:
                log.warning("%s; retrying", exc)
                self.stop.wait(2)
        self.client.loop_start()
        try:
            while not self.stop.is_set():
                batch = self._collect()
                if batch and self._store(batch):
                    self._ack(batch)
                    self.stored_messages += len(batch)
                self._touch_health_file()
        finally:
            self._shutdown()

    def _touch_health_file(self) -> None:
        """Liveness for a container health check: the file's mtime moves while the loop turns and the
        broker connection is up. A worker stuck (in a batch that never commits, or disconnected) lets it
        go stale; the check (docker/compose.yaml) fails once it is older than a minute."""
        now = time.monotonic()
        if self.health_file is None or now - self._health_touched < HEALTH_TOUCH_INTERVAL_S:
            return
        if self.client.is_connected():
            self.health_file.touch()
            self._health_touched = now

    def _shutdown(self) -> None:
        # Queued PUBACKs go out before the DISCONNECT (one ordered packet queue).
        self.client.disconnect()
        self.client.loop_stop()
        log.info("stopped after storing %d messages", self.stored_messages)
        if self.acked_unflushed:
            try:
                close_old_connections()
                with transaction.atomic():
                    services.counters_add({"messages_acked": self.acked_unflushed})
            except TRANSIENT_DB_ERRORS:
                log.warning("could not write the last acknowledgement counter")


def _rows_of(delivery: Delivery) -> int:
    # Cheap estimate without decoding: each record carries a "ts" key, as does the envelope.
    return max(1, delivery.message.payload.count(b'"ts"') - 1)


def _drop_connection() -> None:
    try:
        connection.close()
    except TRANSIENT_DB_ERRORS:
        pass


class Command(BaseCommand):
    help = "Run an MQTT ingest worker: store device telemetry, heartbeats and presence; dead-letter the rest."

    def add_arguments(self, parser):
        parser.add_argument(
            "--client-id",
            default=None,
            help="Stable MQTT client id of this worker (default: ingest-HOSTNAME); the broker keeps its "
            "unacknowledged backlog under this id across restarts. Give each worker its own.",
        )
        parser.add_argument(
            "--exclusive",
            action="store_true",
            help="Subscribe without $share (for a single worker): survives a broker restart while the worker "
            "is away, which Mosquitto 2.0 shared subscriptions do not. Never run two exclusive workers.",
        )
        parser.add_argument("--batch-rows", type=int, default=5000)
        parser.add_argument("--batch-messages", type=int, default=1000)
        parser.add_argument("--batch-ms", type=int, default=200)
        parser.add_argument(
            "--health-file",
            type=Path,
            default=None,
            help="Touch this file every few seconds while connected and working (for container health checks).",
        )

    def handle(self, *args, client_id, exclusive, batch_rows, batch_messages, batch_ms, health_file, **options):
        client_id = client_id or os.environ.get("INGEST_CLIENT_ID") or f"ingest-{socket.gethostname()}"
        worker = IngestWorker(
            client_id=client_id,
            batch_rows=batch_rows,
            batch_messages=batch_messages,
            batch_ms=batch_ms,
            shared=not exclusive,
            health_file=health_file,
        )

        def on_signal(signum, frame):
            log.info("signal %s: finishing the current batch and stopping", signum)
            worker.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("ingest worker %s subscribing to %s", client_id, ", ".join(worker.subscriptions))
        worker.run()
