"""Day partitions ahead and retention (drop old partitions, delete old rollups and dead letters)."""

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from telemetry import partitions, services
from telemetry.models import DeadLetter, InferenceRecord, InferenceRollup

pytestmark = pytest.mark.django_db


def test_partitions_exist_for_today_and_days_ahead():
    partitions.ensure_partitions()
    today = timezone.now().date()
    for table in partitions.PARTITIONED_TABLES:
        have = partitions.existing_partitions(table)
        for offset in range(partitions.DAYS_AHEAD + 1):
            assert today + dt.timedelta(days=offset) in have


def test_retention_drops_old_partitions_and_deletes_old_rows(settings):
    settings.TELEMETRY_RAW_RETENTION_DAYS = 7
    old_day = timezone.now().date() - dt.timedelta(days=10)
    partitions.ensure_partitions(today=old_day, days_ahead=0)
    old_ts = dt.datetime.combine(old_day, dt.time(12), tzinfo=dt.UTC)
    common = {"received_at": timezone.now(), "task": "t", "model_name": "m", "model_version": "1", "route": "local"}
    InferenceRecord.objects.create(device_id="cam-old", seq=1, idx=0, ts=old_ts, latency_ms=1, **common)
    InferenceRecord.objects.create(device_id="cam-new", seq=1, idx=0, ts=timezone.now(), latency_ms=1, **common)
    # A record older than any partition lands in DEFAULT; retention deletes it there.
    InferenceRecord.objects.create(
        device_id="cam-older", seq=1, idx=0, ts=old_ts - dt.timedelta(days=30), latency_ms=1, **common
    )
    InferenceRollup.objects.create(
        device_id="cam-old", model_name="m", model_version="1", bucket=old_ts - dt.timedelta(days=500)
    )
    DeadLetter.objects.create(received_at=old_ts - dt.timedelta(days=60), topic="x", reason="invalid_json", payload=b"")
    done = services.retention_apply()
    assert (
        partitions.partition_name("telemetry_inferencerecord", old_day)
        not in partitions.existing_partitions("telemetry_inferencerecord").values()
    )
    assert done["partitions_dropped"] >= 1
    assert list(InferenceRecord.objects.values_list("device_id", flat=True)) == ["cam-new"]
    assert not InferenceRollup.objects.exists() and not DeadLetter.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_inferencerecord_default")
        assert cursor.fetchone()[0] == 0


def test_partition_creation_skips_a_day_whose_rows_sit_in_default_without_failing():
    far = timezone.now().date() + dt.timedelta(days=20)
    ts = dt.datetime.combine(far, dt.time(8), tzinfo=dt.UTC)
    common = {"received_at": timezone.now(), "task": "t", "model_name": "m", "model_version": "1", "route": "local"}
    InferenceRecord.objects.create(device_id="cam-late", seq=1, idx=0, ts=ts, latency_ms=1, **common)
    created = partitions.ensure_partitions(today=far, days_ahead=1)
    assert partitions.partition_name("telemetry_inferencerecord", far) not in created  # its row is in DEFAULT
    assert partitions.partition_name("telemetry_inferencerecord", far + dt.timedelta(days=1)) in created
    assert InferenceRecord.objects.filter(device_id="cam-late").count() == 1
