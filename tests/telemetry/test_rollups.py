"""Per-minute rollups: computed from raw records, incremental, idempotent, late data folded in."""

import datetime as dt

import pytest
from django.utils import timezone

from fleet_agent import schemas
from telemetry import histogram, services
from telemetry.ingest import InboundMessage, ingest_batch
from telemetry.models import InferenceRollup, RollupDirtyMinute

pytestmark = pytest.mark.django_db


def send(device_id: str, seq: int, records: list[dict]) -> None:
    payload = schemas.encode(schemas.telemetry_message(seq=seq, records=records))
    ingest_batch([InboundMessage(topic=f"devices/{device_id}/telemetry", payload=payload, received_at=timezone.now())])


def rec(ts: dt.datetime, latency: float, **kw) -> dict:
    fields = {"task": "detect", "model": "yolo-n", "model_version": "1.0.0", "latency_ms": latency}
    fields.update(kw)
    return schemas.inference_record(ts_ms=int(ts.timestamp() * 1000), **fields)


def minute_ago(n: int) -> dt.datetime:
    return timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=n)


def test_rollup_counts_errors_cloud_share_confidence_and_latency_quantiles():
    m = minute_ago(3)
    latencies = [float(x) for x in range(1, 101)]  # 1..100 ms
    records = [
        rec(
            m + dt.timedelta(seconds=i % 60),
            lat,
            confidence=0.5,
            error="oom" if i < 5 else None,
            route="cloud" if i < 10 else "local",
        )
        for i, lat in enumerate(latencies)
    ]
    send("cam-r", 1, records)
    assert services.rollups_update() == 1
    r = InferenceRollup.objects.get(device_id="cam-r", bucket=m)
    assert (r.count, r.error_count, r.cloud_count, r.confidence_count) == (100, 5, 10, 100)
    assert r.confidence_sum == pytest.approx(50.0)
    assert r.latency_sum_ms == pytest.approx(sum(latencies))
    assert r.latency_p50_ms == pytest.approx(50, rel=0.05)
    assert r.latency_p95_ms == pytest.approx(95, rel=0.05)
    assert sum(r.latency_hist.values()) == 100
    expected = {}
    for lat in latencies:
        histogram.add(expected, lat)
    assert r.latency_hist == expected  # same buckets as telemetry/histogram.py


def test_rollup_is_idempotent_and_only_recomputes_dirty_minutes():
    m = minute_ago(2)
    send("cam-r", 1, [rec(m, 10.0), rec(m, 20.0)])
    services.rollups_update()
    first = InferenceRollup.objects.values().get(device_id="cam-r")
    assert services.rollups_update() == 0  # nothing new: nothing recomputed
    # Marking the minute dirty again recomputes it to the same row.
    RollupDirtyMinute.objects.create(device_id="cam-r", minute=m)
    assert services.rollups_update() == 1
    assert InferenceRollup.objects.values().get(device_id="cam-r") == first


def test_late_records_are_folded_into_their_old_minute():
    old = minute_ago(90)
    send("cam-r", 1, [rec(old, 10.0)])
    services.rollups_update()
    send("cam-r", 2, [rec(old + dt.timedelta(seconds=5), 30.0)])  # arrives much later, same minute
    services.rollups_update()
    r = InferenceRollup.objects.get(device_id="cam-r", bucket=old)
    assert r.count == 2 and r.latency_sum_ms == pytest.approx(40.0)


def test_redelivered_message_does_not_change_the_rollup():
    m = minute_ago(1)
    send("cam-r", 1, [rec(m, 10.0)])
    services.rollups_update()
    send("cam-r", 1, [rec(m, 10.0)])
    services.rollups_update()
    assert InferenceRollup.objects.get(device_id="cam-r").count == 1


def test_versions_are_rolled_up_separately():
    m = minute_ago(1)
    send("cam-r", 1, [rec(m, 10.0), rec(m, 12.0, model_version="2.0.0")])
    services.rollups_update()
    assert sorted(InferenceRollup.objects.values_list("model_version", "count")) == [("1.0.0", 1), ("2.0.0", 1)]
