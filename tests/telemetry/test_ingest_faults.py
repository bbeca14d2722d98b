"""End-to-end: real Mosquitto, real PostgreSQL, `manage.py ingest` as a separate process, devices
publishing with their certificates. After each fault every record is stored exactly once."""

import time

import pytest
from django.db import connection

from devices.models import Device
from telemetry.models import DeadLetter, InferenceRecord, IngestCounter
from tests.factories import make_device
from tests.telemetry.ingest_helpers import (
    WorkerProcess,
    bad_payloads,
    device_client,
    forget_session,
    new_client_id,
    publish_all,
    telemetry_payload,
    wait_for,
)


@pytest.fixture
def workers(mqtt_broker_tx, test_database_url):
    started: list[WorkerProcess] = []

    def start(client_id: str | None = None, *args: str) -> WorkerProcess:
        worker = WorkerProcess(client_id=client_id or new_client_id(), database_url=test_database_url, args=list(args))
        worker.start()
        worker.wait_connected()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
        print(f"--- log of {worker.client_id}\n{worker.log()[-4000:]}")  # shown when the test fails
    for client_id in {w.client_id for w in started}:
        try:
            forget_session(client_id)
        except Exception:  # the broker may be down after a failed test; the next test restarts nothing
            pass


@pytest.fixture
def devices(mqtt_broker_tx):
    enrolled = [make_device(f"cam-e2e-{i}") for i in range(3)]
    clients = [device_client(result, key) for result, key in enrolled]
    yield [(result.device.id, client) for (result, _key), client in zip(enrolled, clients, strict=True)]
    for client in clients:
        client.close()


def stored(device_ids) -> int:
    return InferenceRecord.objects.filter(device_id__in=device_ids).count()


def assert_exactly_once(expected: dict[str, int]) -> None:
    """expected: device id -> number of single-record messages with seq 1..n."""
    for device_id, n in expected.items():
        rows = InferenceRecord.objects.filter(device_id=device_id)
        assert rows.count() == n, f"{device_id}: {rows.count()} rows for {n} messages"
        assert rows.values("seq", "idx").distinct().count() == n
        assert set(rows.values_list("seq", flat=True)) == set(range(1, n + 1))


def wait_stored(expected: dict[str, int], timeout: float = 90) -> None:
    total = sum(expected.values())
    wait_for(lambda: stored(list(expected)) >= total, timeout=timeout, what=f"{total} rows")
    time.sleep(0.5)  # a duplicate would show up now
    assert_exactly_once(expected)


def counter(name: str) -> float:
    row = IngestCounter.objects.filter(name=name).first()
    return row.value if row else 0


def test_worker_stores_telemetry_heartbeat_and_presence(workers, devices):
    workers()
    (device_id, client), *_ = devices
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 51)])
    from fleet_agent import schemas

    publish_all(client, device_id, [schemas.encode(schemas.status_message(seq=51, state="online"))], leaf="status")
    wait_stored({device_id: 50})
    wait_for(lambda: Device.objects.get(pk=device_id).online, what="device online")
    assert Device.objects.get(pk=device_id).last_seen_at is not None


def test_kill_9_mid_batch_then_restart_stores_everything_once(workers, devices):
    client_id = new_client_id()
    workers(client_id).terminate()  # the session exists: the backlog below is queued for it
    expected = {}
    for device_id, client in devices:
        publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 2001)])
        expected[device_id] = 2000
    worker = workers(client_id, "--batch-messages", "400")
    wait_for(lambda: stored(list(expected)) > 0, interval=0.02, what="a first batch")
    worker.kill()
    assert stored(list(expected)) < 6000, "the kill came too late to be mid-stream"
    workers(client_id)  # same client id: the broker hands back the unacknowledged backlog
    wait_stored(expected)


def test_sigterm_stops_cleanly_and_the_restart_gets_the_rest(workers, devices):
    client_id = new_client_id()
    worker = workers(client_id, "--batch-messages", "200")
    expected = {}
    for device_id, client in devices:
        publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 401)])
        expected[device_id] = 400
    wait_for(lambda: stored(list(expected)) > 0, what="a first batch")
    assert worker.terminate() == 0
    workers(client_id)
    wait_stored(expected)
    assert counter("messages_acked") <= counter("messages_in")


def test_mosquitto_restart_keeps_the_backlog_queued_for_a_stopped_worker(workers, devices, mqtt_broker_tx):
    client_id = new_client_id()
    worker = workers(client_id)
    (device_id, client), *_ = devices
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 201)])
    wait_stored({device_id: 200})
    worker.terminate()
    # Queued for the stopped worker's persistent session, then the broker restarts (persistence on).
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(201, 401)])
    mqtt_broker_tx.restart()
    workers(client_id)
    wait_stored({device_id: 400})


def test_mosquitto_restart_under_a_running_worker(workers, devices, mqtt_broker_tx):
    worker = workers()
    (device_id, client), *_ = devices
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 101)])
    wait_stored({device_id: 100})
    mqtt_broker_tx.restart()
    # The worker reconnects by itself and subscribes again (Mosquitto 2.0 does not restore shared
    # subscriptions, so the worker's own resubscription is what makes it receive again).
    wait_for(lambda: worker.log().count("connected as") >= 2, what="the worker to reconnect")
    wait_for(lambda: client.client.is_connected(), what="the device to reconnect")
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(101, 201)])
    wait_stored({device_id: 200})


def test_exclusive_worker_gets_what_was_published_while_broker_restarted_without_it(workers, devices, mqtt_broker_tx):
    client_id = new_client_id()
    worker = workers(client_id, "--exclusive")
    worker.terminate()
    mqtt_broker_tx.restart()
    (device_id, client), *_ = devices
    wait_for(lambda: client.client.is_connected(), what="the device to reconnect")
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 101)])
    workers(client_id, "--exclusive")
    wait_stored({device_id: 100})


def test_postgresql_unavailable_for_seconds_then_everything_is_stored_once(workers, devices, postgres_server):
    workers()
    (device_id, client), *_ = devices
    publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 101)])
    wait_stored({device_id: 100})
    connection.close()
    postgres_server.stop()
    try:
        publish_all(client, device_id, [telemetry_payload(seq) for seq in range(101, 301)])
        time.sleep(4)  # the worker retries meanwhile and acknowledges nothing
    finally:
        postgres_server.start()
    connection.close()
    wait_stored({device_id: 300})


def test_sigterm_while_the_database_is_away_acknowledges_nothing(workers, devices, postgres_server):
    client_id = new_client_id()
    worker = workers(client_id)
    (device_id, client), *_ = devices
    connection.close()
    postgres_server.stop()
    try:
        publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 151)])
        wait_for(lambda: "database unavailable" in worker.log(), what="the worker to retry")
        assert worker.terminate(timeout=20) == 0  # stops promptly, without storing or acknowledging
    finally:
        postgres_server.start()
    connection.close()
    assert stored([device_id]) == 0
    workers(client_id)  # the broker redelivers the whole unacknowledged batch to the same session
    wait_stored({device_id: 150})


def test_two_workers_share_the_subscription_and_store_each_record_once(workers, devices):
    first, second = workers(), workers()
    expected = {}
    for device_id, client in devices:
        publish_all(client, device_id, [telemetry_payload(seq) for seq in range(1, 501)])
        expected[device_id] = 500
    wait_stored(expected)
    first.terminate()
    second.terminate()
    for worker in (first, second):
        assert "stopped after storing" in worker.log()
        stored_by = int(worker.log().rsplit("stopped after storing ", 1)[1].split(" ", 1)[0])
        assert stored_by > 0, f"{worker.client_id} got no share of the load"


def test_flood_of_malformed_messages_mixed_with_good_ones(workers, devices):
    workers()
    (device_id, client), *_ = devices
    payloads, bad = [], 0
    for seq in range(1, 301):
        payloads.append(telemetry_payload(seq))
        for payload in bad_payloads(seq + 10_000):
            payloads.append(payload)
            bad += 1
    publish_all(client, device_id, payloads)
    wait_stored({device_id: 300})
    wait_for(lambda: DeadLetter.objects.filter(device_id=device_id).count() >= bad, what=f"{bad} dead letters")
    assert DeadLetter.objects.filter(device_id=device_id).count() == bad
    reasons = set(DeadLetter.objects.values_list("reason", flat=True))
    assert {"invalid_json", "not_object", "unsupported_version", "field_missing", "ts_out_of_range"} <= reasons
    assert "device_mismatch" in reasons


def test_health_file_moves_while_the_worker_runs_and_goes_stale_when_it_stops(workers, tmp_path):
    health = tmp_path / "ingest-alive"
    worker = workers(None, "--health-file", str(health))
    wait_for(health.exists, timeout=20, what="the health file")
    first = health.stat().st_mtime
    wait_for(lambda: health.stat().st_mtime > first, timeout=20, what="the health file to be touched again")
    worker.kill()
    last = health.stat().st_mtime
    time.sleep(7)  # longer than the touch interval: a dead worker leaves the file stale
    assert health.stat().st_mtime == last
