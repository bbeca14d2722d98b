"""The agent's MQTT session against the real broker (mTLS, ACL): presence, heartbeats, telemetry,
store-and-forward across a broker outage, and seq across restarts. What the platform receives is observed
with the ingest worker's own credentials."""

import json
import os
import signal
import subprocess
import sys
import time

from fleet_agent.outbox import Outbox
from tests.agent.conftest import FAST, Observer, bodies, enroll_device, wait_until


def records_of(messages, device_id):
    by_seq = {}
    for topic, payload, _retain in messages:
        if topic == f"devices/{device_id}/telemetry":
            body = json.loads(payload)
            assert by_seq.setdefault(body["seq"], payload) == payload  # a redelivery is byte-identical
    return [r for seq in sorted(by_seq) for r in json.loads(by_seq[seq])["records"]]


def test_agent_announces_online_sends_heartbeats_and_its_will_says_offline(platform_url, observer, tmp_path):
    state = tmp_path / "cam-lwt"
    enroll_device(platform_url, state, "cam-lwt", settings=FAST)
    process = subprocess.Popen([sys.executable, "-m", "fleet_agent.cli", "run", "--dir", str(state)])
    try:
        seen = observer.wait_for(lambda m: bodies(m, "status", "cam-lwt") and bodies(m, "heartbeat", "cam-lwt"))
        status = bodies(seen, "status", "cam-lwt")[0]
        assert status["state"] == "online" and status["v"] == 1 and status["seq"] >= 1
        beat = bodies(seen, "heartbeat", "cam-lwt")[0]
        assert {
            "cpu_pct",
            "mem_pct",
            "disk_pct",
            "temp_c",
            "models",
            "buffer_depth",
            "dropped",
            "agent_version",
        } <= set(beat)
        assert beat["seq"] > status["seq"]
    finally:
        process.send_signal(signal.SIGKILL)  # power cut: no DISCONNECT, the broker publishes the will
        process.wait()
    will = bodies(observer.wait_for(lambda m: bodies(m, "status", "cam-lwt")), "status", "cam-lwt")[0]
    assert will["state"] == "offline"
    assert will["seq"] < status["seq"]  # reserved before the connection, a seq never used for anything else


def test_clean_shutdown_publishes_offline(platform_url, observer, tmp_path):
    state = tmp_path / "cam-stop"
    enroll_device(platform_url, state, "cam-stop", settings=FAST)
    process = subprocess.Popen([sys.executable, "-m", "fleet_agent.cli", "run", "--dir", str(state)])
    observer.wait_for(lambda m: bodies(m, "status", "cam-stop"))
    os.kill(process.pid, signal.SIGTERM)
    process.wait(20)
    assert process.returncode == 0
    seen = observer.wait_for(lambda m: bodies(m, "status", "cam-stop"))
    states = [b["state"] for b in bodies(seen, "status", "cam-stop")]
    assert states == ["offline"]


def test_recorded_inferences_are_published_in_batches_and_removed_after_puback(
    platform_url, observer, tmp_path, running
):
    state = tmp_path / "cam-tele"
    enroll_device(platform_url, state, "cam-tele")
    agent = running(state)
    for i in range(1200):
        agent.record_inference(
            task="detect", model="yolo-n", model_version="1.0.0", latency_ms=i, confidence=0.5, label="person"
        )
    seen = observer.wait_for(lambda m: len(records_of(m, "cam-tele")) >= 1200)
    records = records_of(seen, "cam-tele")
    assert [r["latency_ms"] for r in records] == [float(i) for i in range(1200)]
    assert set(records[0]) == {
        "ts",
        "task",
        "model",
        "model_version",
        "latency_ms",
        "confidence",
        "label",
        "route",
        "cloud_model",
        "tokens_in",
        "tokens_out",
        "error",
    }
    wait_until(lambda: agent.outbox.depth() == 0)


def test_records_made_while_the_broker_is_down_are_all_delivered_after_it_returns(
    platform_url, mqtt_broker_tx, tmp_path, running
):
    state = tmp_path / "cam-offline"
    enroll_device(platform_url, state, "cam-offline")
    watcher = Observer("agent-offline-observer")  # persistent session: it misses nothing across the restart
    try:
        agent = running(state)
        wait_until(lambda: agent.session.connected)
        for i in range(100):
            agent.record_inference(task="detect", model="yolo-n", model_version="1.0.0", latency_ms=i)
        wait_until(lambda: agent.outbox.depth() == 0)
        mqtt_broker_tx.stop()
        wait_until(lambda: not agent.session.connected)
        for i in range(100, 1100):
            agent.record_inference(task="detect", model="yolo-n", model_version="1.0.0", latency_ms=i)
        time.sleep(1.5)  # the agent keeps trying to reconnect meanwhile
        assert agent.outbox.depth() == 1000
        mqtt_broker_tx.start()
        seen = watcher.wait_for(lambda m: len(records_of(m, "cam-offline")) >= 1100, timeout=40)
        records = records_of(seen, "cam-offline")
        assert sorted(r["latency_ms"] for r in records) == [float(i) for i in range(1100)]  # each exactly once
        wait_until(lambda: agent.outbox.depth() == 0)
    finally:
        watcher.close()


def test_seq_keeps_growing_across_agent_restarts(platform_url, observer, tmp_path, running):
    state = tmp_path / "cam-seq"
    enroll_device(platform_url, state, "cam-seq")
    runs = []
    for _round in range(2):
        process = subprocess.Popen([sys.executable, "-m", "fleet_agent.cli", "run", "--dir", str(state)])
        seen = observer.wait_for(lambda m: bodies(m, "status", "cam-seq") and bodies(m, "heartbeat", "cam-seq"))
        runs.append(
            (bodies(seen, "status", "cam-seq")[0]["seq"], [b["seq"] for b in bodies(seen, "heartbeat", "cam-seq")])
        )
        process.kill()  # no clean shutdown: the reserved block is simply skipped
        process.wait()
        observer.wait_for(lambda m: bodies(m, "status", "cam-seq"))  # the will
    (online_1, beats_1), (online_2, _beats_2) = runs
    # Every message of the second run is newer than all of the first (a heartbeat of the first run that
    # was not acknowledged before the kill may be re-sent, with its original seq: a no-op for the platform).
    assert online_2 > max([online_1, *beats_1])


def test_disk_cap_drops_oldest_while_offline_and_the_next_heartbeat_reports_it(
    platform_url, observer, tmp_path, running
):
    state = tmp_path / "cam-cap"
    enroll_device(platform_url, state, "cam-cap")
    outbox = Outbox(state / "queue.db", cap_bytes=60_000)
    outbox.add_records([{"ts": 1, "task": "detect", "latency_ms": float(i), "label": "x" * 100} for i in range(600)])
    dropped = outbox.dropped()
    outbox.close()
    assert dropped > 0
    running(state, disk_cap_mb=60_000 / 1024 / 1024)
    seen = observer.wait_for(
        lambda m: bodies(m, "heartbeat", "cam-cap") and len(records_of(m, "cam-cap")) >= 600 - dropped
    )
    assert bodies(seen, "heartbeat", "cam-cap")[0]["dropped"] == dropped
    latencies = [r["latency_ms"] for r in records_of(seen, "cam-cap")]
    assert latencies == [float(i) for i in range(dropped, 600)]  # the oldest were dropped


def test_reconnect_delay_grows_exponentially_with_jitter_and_a_ceiling():
    from fleet_agent.session import backoff_delay

    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 60.0)]:
        delays = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not lockstep


def test_agent_refuses_a_broker_its_ca_does_not_vouch_for(platform_url, tmp_path, running):
    from devices.ca import cert_pem, create_ca

    state = tmp_path / "cam-mitm"
    enroll_device(platform_url, state, "cam-mitm")
    _key, other_ca = create_ca("Some Other CA")
    (state / "ca.pem").write_text(cert_pem(other_ca))
    agent = running(state)
    wait_until(lambda: "certificate verify failed" in agent.session.last_error)
    assert not agent.session.connected


def test_running_agent_renews_its_certificate_and_reconnects_with_it(platform_url, tmp_path, running, monkeypatch):
    from fleet_agent import agent as agent_module
    from fleet_agent.enroll import certificate

    state = tmp_path / "cam-renewing"
    enroll_device(platform_url, state, "cam-renewing")
    before = certificate(state).serial_number
    due = []  # the certificate becomes due when the test says so (as it would 60 days later)
    monkeypatch.setattr(agent_module, "needs_renewal", lambda cert: bool(due) and cert.serial_number == before)
    agent = running(state, renew_check_interval_s=0.2)
    wait_until(lambda: agent.session.connected)
    first_connection = agent.session.connected_since
    due.append(True)
    wait_until(lambda: certificate(state).serial_number != before)
    # It reconnected after the renewal, so the live session uses the new certificate.
    wait_until(lambda: agent.session.connected and agent.session.connected_since > first_connection)
