"""State changes of the telemetry app outside the ingest sinks: counters, presence, rollups, retention."""

import datetime as dt
import logging
from collections import defaultdict

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from devices.models import Device, DeviceStatus
from telemetry import histogram, partitions
from telemetry.models import (
    DeadLetter,
    DevicePresence,
    Heartbeat,
    InferenceRecord,
    InferenceRollup,
    IngestCounter,
    PresenceCause,
    PresenceEvent,
    RollupDirtyMinute,
)

log = logging.getLogger(__name__)


# --- counters --------------------------------------------------------------------------------------


def counters_add(increments: dict[str, float]) -> None:
    """Add to the shared counters (inside the caller's transaction).

    Every worker updates the same few rows, so the rows are locked in name order (no deadlock between
    two workers) and as late as possible in the batch transaction (short lock).
    """
    items = sorted((name, float(value)) for name, value in increments.items() if value)
    if not items:
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_ingestcounter (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = telemetry_ingestcounter.value + excluded.value",
            items,
        )


def counters_snapshot() -> dict[str, float]:
    return dict(IngestCounter.objects.values_list("name", "value"))


# --- presence --------------------------------------------------------------------------------------


# last_seen_at is written at most this often per device: with thousands of devices reporting every few
# seconds, rewriting every device row on every batch would bloat the devices table for no reader's gain.
LAST_SEEN_RESOLUTION = dt.timedelta(seconds=10)


def devices_mark_seen(*, device_ids: set[str], at: dt.datetime) -> int:
    """Move last_seen_at forward (never back, and only by LAST_SEEN_RESOLUTION or more) for devices the
    worker just heard from; returns rows changed.

    Runs after the batch commit in its own short transaction: presence is not part of the exactly-once
    promise. Two workers may touch the same device: rows are locked in id order and locked rows skipped
    (the other worker is writing nearly the same time), so the update never deadlocks or waits.
    """
    if not device_ids:
        return 0
    ids = sorted(device_ids)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE devices_device SET last_seen_at = %s WHERE id IN ("
                    " SELECT id FROM devices_device WHERE id = ANY(%s)"
                    " AND (last_seen_at IS NULL OR last_seen_at < %s) ORDER BY id FOR UPDATE SKIP LOCKED)",
                    [at, ids, at - LAST_SEEN_RESOLUTION],
                )
                return cursor.rowcount
        return (
            Device.objects.filter(pk__in=ids)
            .filter(Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=at - LAST_SEEN_RESOLUTION))
            .update(last_seen_at=at)
        )


# --- presence --------------------------------------------------------------------------------------


def devices_revoked(*, device_ids: set[str]) -> set[str]:
    """The ones among ``device_ids`` that an operator revoked (one primary-key lookup per batch)."""
    if not device_ids:
        return set()
    return set(Device.objects.filter(pk__in=device_ids, status=DeviceStatus.REVOKED).values_list("pk", flat=True))


def presence_lock(*, device_id: str) -> DevicePresence | None:
    """Lock a device's presence row (None if it never sent a status) inside the caller's transaction.

    The status sink locks presence rows before it updates device rows; a writer that needs both must
    take them in that order too, or the two can deadlock.
    """
    return DevicePresence.objects.select_for_update().filter(pk=device_id).first()


def presence_revoke(presence: DevicePresence | None, *, at: dt.datetime) -> None:
    """Take a device that is being revoked offline in its presence and record why in its history.

    Its connection may stay open until it drops (the broker checks the revocation list only at the TLS
    handshake), but ingest stores nothing from a revoked device, so no status of its own will ever say so.
    """
    if presence is None or not presence.online:
        return
    presence.online = False
    presence.save(update_fields=["online"])
    PresenceEvent.objects.create(
        device_id=presence.device_id,
        seq=presence.status_seq,
        online=False,
        cause=PresenceCause.REVOKED,
        at=at,
        received_at=at,
    )


# --- rollups ---------------------------------------------------------------------------------------

_BUCKET_SQL = (
    f"CASE WHEN latency_ms <= {histogram.MIN_MS} THEN 0 ELSE LEAST({histogram.MAX_BUCKET}, "
    f"floor(ln(latency_ms / {histogram.MIN_MS}) / ln({histogram.GROWTH}))::int + 1) END"
)


def _claim_dirty_minutes(limit: int) -> list[tuple[str, dt.datetime]]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # SKIP LOCKED: two rollup runs at once split the work instead of waiting on each other.
            cursor.execute(
                "DELETE FROM telemetry_rollupdirtyminute WHERE (device_id, minute) IN ("
                " SELECT device_id, minute FROM telemetry_rollupdirtyminute ORDER BY minute"
                " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING device_id, minute",
                [limit],
            )
            return cursor.fetchall()
    claimed = list(RollupDirtyMinute.objects.order_by("minute").values_list("device_id", "minute")[:limit])
    for device_id, minute in claimed:
        RollupDirtyMinute.objects.filter(device_id=device_id, minute=minute).delete()
    return claimed


def _aggregate_postgresql(pairs: list[tuple[str, dt.datetime]]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.device_id, r.model_name, r.model_version, d.minute, "  # noqa: S608 - constant SQL
            f"{_BUCKET_SQL} AS bucket, count(*), count(r.error), count(*) FILTER (WHERE r.route = 'cloud'), "
            "coalesce(sum(r.confidence), 0), count(r.confidence), sum(r.latency_ms) "
            "FROM unnest(%s::varchar[], %s::timestamptz[]) AS d(device_id, minute) "
            "JOIN telemetry_inferencerecord r ON r.device_id = d.device_id "
            " AND r.ts >= d.minute AND r.ts < d.minute + interval '1 minute' "
            "GROUP BY 1, 2, 3, 4, 5",
            [[p[0] for p in pairs], [p[1] for p in pairs]],
        )
        return cursor.fetchall()


def _aggregate_python(pairs: list[tuple[str, dt.datetime]]) -> list[tuple]:
    """The embedded (SQLite) path: aggregate raw rows in Python; volumes there are small."""
    groups: dict[tuple, list] = {}
    for device_id, minute in pairs:
        rows = InferenceRecord.objects.filter(
            device_id=device_id, ts__gte=minute, ts__lt=minute + dt.timedelta(minutes=1)
        ).values_list("model_name", "model_version", "latency_ms", "error", "route", "confidence")
        for model_name, version, latency, error, route, confidence in rows:
            key = (device_id, model_name, version, minute, histogram.bucket_of(latency))
            g = groups.setdefault(key, [0, 0, 0, 0.0, 0, 0.0])
            g[0] += 1
            g[1] += error is not None
            g[2] += route == "cloud"
            g[3] += confidence or 0.0
            g[4] += confidence is not None
            g[5] += latency
    return [(*key, *values) for key, values in groups.items()]


def rollups_update(*, limit: int = 20_000) -> int:
    """Recompute the rollups of the (device, minute) pairs that got records since the last run.

    Incremental (only dirty minutes) and idempotent (a minute is recomputed from its raw rows and
    upserted, so running twice gives the same rows; late records mark their minute dirty again).
    Returns the number of rollup rows written.
    """
    written = 0
    with transaction.atomic():
        pairs = _claim_dirty_minutes(limit)
        if not pairs:
            return 0
        aggregate = _aggregate_postgresql if connection.vendor == "postgresql" else _aggregate_python
        rollups: dict[tuple, dict] = defaultdict(
            lambda: {"count": 0, "errors": 0, "cloud": 0, "conf_sum": 0.0, "conf_n": 0, "lat_sum": 0.0, "hist": {}}
        )
        for device_id, model_name, version, minute, bucket, n, errors, cloud, conf_sum, conf_n, lat_sum in aggregate(
            pairs
        ):
            r = rollups[(device_id, model_name, version, minute)]
            r["count"] += n
            r["errors"] += errors
            r["cloud"] += cloud
            r["conf_sum"] += conf_sum
            r["conf_n"] += conf_n
            r["lat_sum"] += lat_sum
            r["hist"][str(bucket)] = r["hist"].get(str(bucket), 0) + n
        rows = [
            InferenceRollup(
                device_id=device_id,
                model_name=model_name,
                model_version=version,
                bucket=minute,
                count=r["count"],
                error_count=r["errors"],
                cloud_count=r["cloud"],
                confidence_sum=r["conf_sum"],
                confidence_count=r["conf_n"],
                latency_sum_ms=r["lat_sum"],
                latency_p50_ms=histogram.quantile(r["hist"], 0.5),
                latency_p95_ms=histogram.quantile(r["hist"], 0.95),
                latency_hist=r["hist"],
            )
            for (device_id, model_name, version, minute), r in sorted(rollups.items())
        ]
        InferenceRollup.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["device", "model_name", "model_version", "bucket"],
            update_fields=[
                "count",
                "error_count",
                "cloud_count",
                "confidence_sum",
                "confidence_count",
                "latency_sum_ms",
                "latency_p50_ms",
                "latency_p95_ms",
                "latency_hist",
            ],
            batch_size=1000,
        )
        written += len(rows)
    return written


# --- retention -------------------------------------------------------------------------------------


def retention_apply(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Drop raw partitions past the raw retention and delete old rollups, dead letters and presence history."""
    now = now or timezone.now()
    raw_cutoff = now - dt.timedelta(days=settings.TELEMETRY_RAW_RETENTION_DAYS)
    done = {"partitions_dropped": len(partitions.drop_partitions_before(cutoff=raw_cutoff.date()))}
    # What remains older than the cutoff sits in the DEFAULT partition (or in the plain SQLite tables).
    done["records_deleted"] = InferenceRecord.objects.filter(ts__lt=raw_cutoff).delete()[0]
    done["heartbeats_deleted"] = Heartbeat.objects.filter(ts__lt=raw_cutoff).delete()[0]
    done["dirty_minutes_deleted"] = RollupDirtyMinute.objects.filter(minute__lt=raw_cutoff).delete()[0]
    rollup_cutoff = now - dt.timedelta(days=settings.TELEMETRY_ROLLUP_RETENTION_DAYS)
    done["rollups_deleted"] = InferenceRollup.objects.filter(bucket__lt=rollup_cutoff).delete()[0]
    dead_cutoff = now - dt.timedelta(days=settings.TELEMETRY_DEAD_LETTER_RETENTION_DAYS)
    done["dead_letters_deleted"] = DeadLetter.objects.filter(received_at__lt=dead_cutoff).delete()[0]
    presence_cutoff = now - dt.timedelta(days=settings.TELEMETRY_PRESENCE_RETENTION_DAYS)
    done["presence_events_deleted"] = PresenceEvent.objects.filter(at__lt=presence_cutoff).delete()[0]
    return done


def partitions_maintain() -> list[str]:
    return partitions.ensure_partitions()
