"""Telemetry API and /metrics: viewers read, anonymous and device credentials are refused."""

import base64
import datetime as dt

import pytest
from django.utils import timezone

from fleet_agent import schemas
from telemetry import services
from telemetry.ingest import InboundMessage, ingest_batch
from tests.factories import make_device

pytestmark = pytest.mark.django_db


def send(device_id: str, leaf: str, payload: bytes) -> None:
    ingest_batch([InboundMessage(topic=f"devices/{device_id}/{leaf}", payload=payload, received_at=timezone.now())])


def telemetry(seq: int, version: str = "1.0.0", latency: float = 10.0, error=None) -> bytes:
    record = schemas.inference_record(
        task="detect", model="yolo-n", model_version=version, latency_ms=latency, confidence=0.8, error=error
    )
    return schemas.encode(schemas.telemetry_message(seq=seq, records=[record]))


@pytest.fixture
def device():
    result, _key = make_device("cam-api")
    return result.device


def test_viewer_reads_recent_records_newest_first(viewer_api, device):
    for seq in (1, 2, 3):
        send(device.id, "telemetry", telemetry(seq))
    response = viewer_api.get(f"/api/v1/telemetry/devices/{device.id}/records/?limit=2")
    assert response.status_code == 200
    assert [r["seq"] for r in response.json()["results"]] == [3, 2]
    assert response.json()["results"][0]["model_version"] == "1.0.0"


def test_records_of_unknown_device_is_404_with_code(viewer_api):
    response = viewer_api.get("/api/v1/telemetry/devices/nope-device/records/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "device_not_found"


def test_bad_window_is_400_with_field(viewer_api, device):
    response = viewer_api.get(f"/api/v1/telemetry/devices/{device.id}/records/?limit=0")
    assert response.status_code == 400
    assert "limit" in response.json()["error"]["fields"]
    response = viewer_api.get("/api/v1/telemetry/model-versions/?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z")
    assert response.status_code == 400


def test_viewer_reads_heartbeats(viewer_api, device):
    body = schemas.heartbeat_message(
        seq=9, cpu_pct=5, mem_pct=6, disk_pct=7, models=[], buffer_depth=0, dropped=2, agent_version="0.1.0"
    )
    send(device.id, "heartbeat", schemas.encode(body))
    response = viewer_api.get(f"/api/v1/telemetry/devices/{device.id}/heartbeats/")
    assert response.status_code == 200
    assert response.json()["results"][0]["dropped"] == 2


def test_model_version_aggregates_come_from_rollups(viewer_api, device):
    send(device.id, "telemetry", telemetry(1, "1.0.0", 10.0))
    send(device.id, "telemetry", telemetry(2, "1.0.0", 20.0, error="timeout"))
    send(device.id, "telemetry", telemetry(3, "2.0.0", 5.0))
    url = "/api/v1/telemetry/model-versions/"
    assert viewer_api.get(url).json()["results"] == []  # not rolled up yet: the API reads rollups only
    services.rollups_update()
    results = {r["model_version"]: r for r in viewer_api.get(url).json()["results"]}
    assert results["1.0.0"]["count"] == 2 and results["1.0.0"]["error_rate"] == 0.5
    assert results["1.0.0"]["confidence_mean"] == pytest.approx(0.8)
    assert results["2.0.0"]["devices"] == 1
    only = viewer_api.get(url + "?version=2.0.0").json()["results"]
    assert [r["model_version"] for r in only] == ["2.0.0"]
    since = (timezone.now() - dt.timedelta(days=60)).isoformat()
    assert viewer_api.get(url, {"since": since}).json()["error"]["code"] == "window_too_large"


def test_dead_letters_are_listed_with_reason_and_filterable(viewer_api, device):
    send(device.id, "telemetry", b"{broken")
    send(device.id, "telemetry", b"[]")
    response = viewer_api.get("/api/v1/telemetry/dead-letters/")
    assert response.status_code == 200
    assert [d["reason"] for d in response.json()["results"]] == ["not_object", "invalid_json"]
    filtered = viewer_api.get("/api/v1/telemetry/dead-letters/?reason=invalid_json").json()["results"]
    assert len(filtered) == 1
    assert base64.b64decode(filtered[0]["payload_base64"]) == b"{broken"
    assert filtered[0]["topic"] == f"devices/{device.id}/telemetry"


def test_counters_and_metrics(viewer_api, device):
    send(device.id, "telemetry", telemetry(1))
    send(device.id, "telemetry", b"nope")
    counters = viewer_api.get("/api/v1/telemetry/counters/").json()
    assert counters["counters"]["messages_in"] == 2
    assert counters["acknowledged_unwritten"] == 0
    response = viewer_api.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert "fleet_ingest_messages_total 2" in text
    assert 'fleet_ingest_dead_letters_total{reason="invalid_json"} 1' in text
    assert 'fleet_ingest_rows_written_total{table="inference_records"} 1' in text
    assert "fleet_ingest_acknowledged_unwritten 0" in text
    assert "fleet_ingest_batch_seconds_count 2" in text


def test_anonymous_cannot_read_telemetry_or_metrics(anon_api, device):
    assert anon_api.get("/metrics").status_code in (401, 403)
    assert anon_api.get(f"/api/v1/telemetry/devices/{device.id}/records/").status_code in (401, 403)
    assert anon_api.get("/api/v1/telemetry/dead-letters/").status_code in (401, 403)


def test_console_session_can_read_metrics(client, device):
    from tests.factories import make_operator

    user, _token = make_operator(role="viewer")
    client.force_login(user)
    assert client.get("/metrics").status_code == 200
