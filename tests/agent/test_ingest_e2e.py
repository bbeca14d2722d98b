"""End-to-end with the platform's ingest worker (``manage.py ingest`` in its own process): what the agent
buffered through a broker outage is stored on the server, every record exactly once."""

import pytest
from django.db import close_old_connections

from devices.models import Device
from telemetry.models import Heartbeat, InferenceRecord
from tests.agent.conftest import enroll_device, wait_until
from tests.telemetry.ingest_helpers import WorkerProcess, forget_session, new_client_id


@pytest.fixture
def ingest_worker(mqtt_broker_tx, test_database_url):
    worker = WorkerProcess(client_id=new_client_id("agent-e2e"), database_url=test_database_url, args=["--exclusive"])
    worker.start()
    worker.wait_connected()
    yield worker
    worker.kill()
    print(f"--- ingest log\n{worker.log()[-3000:]}")  # shown when the test fails
    try:
        forget_session(worker.client_id)
    except Exception:
        pass


def stored(device_id: str) -> int:
    close_old_connections()
    return InferenceRecord.objects.filter(device_id=device_id).count()


def test_records_buffered_through_a_broker_outage_are_stored_exactly_once(
    platform_url, mqtt_broker_tx, ingest_worker, tmp_path, running
):
    state = tmp_path / "cam-e2e-agent"
    enroll_device(platform_url, state, "cam-e2e-agent")
    agent = running(state)
    wait_until(lambda: agent.session.connected)
    for i in range(200):
        agent.record_inference(task="detect", model="yolo-n", model_version="1.0.0", latency_ms=i, confidence=0.5)
    wait_until(lambda: agent.outbox.depth() == 0)
    mqtt_broker_tx.stop()
    wait_until(lambda: not agent.session.connected)
    for i in range(200, 1200):
        agent.record_inference(task="detect", model="yolo-n", model_version="1.0.0", latency_ms=i, confidence=0.5)
    assert agent.outbox.depth() == 1000
    mqtt_broker_tx.start()
    try:
        wait_until(lambda: stored("cam-e2e-agent") >= 1200, timeout=90)
    finally:
        from telemetry.models import DeadLetter

        print("stored", stored("cam-e2e-agent"), list(DeadLetter.objects.values_list("reason", "detail")[:5]))
    wait_until(lambda: agent.outbox.depth() == 0)
    rows = InferenceRecord.objects.filter(device_id="cam-e2e-agent")
    assert rows.count() == 1200
    assert rows.values("seq", "idx").distinct().count() == 1200
    assert sorted(rows.values_list("latency_ms", flat=True)) == [float(i) for i in range(1200)]
    assert Heartbeat.objects.filter(device_id="cam-e2e-agent").exists()
    wait_until(lambda: close_old_connections() or Device.objects.get(pk="cam-e2e-agent").online)
