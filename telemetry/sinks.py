"""Sinks of the ingest worker, by topic leaf (see telemetry/ingest_contract.py for the contract).

Each sink validates the bodies of one topic's messages, stores the valid ones idempotently and returns a
Rejection for each invalid one. They run inside the worker's batch transaction and never commit.
"""

import datetime as dt
import json
from collections import defaultdict

from django.db import connection

from devices.models import Device
from fleet_agent import schemas
from ota.ingest import store_ota_status
from policies.ingest import store_llm_usage
from telemetry.ingest_contract import DeviceMessage, Rejection, Sink, count_rows_written
from telemetry.models import (
    HEARTBEAT_COLUMNS,
    INFERENCE_RECORD_COLUMNS,
    DevicePresence,
    PresenceCause,
    PresenceEvent,
)


def insert_ignoring_conflicts(table: str, columns: list[str], rows: list[tuple]) -> int:
    """INSERT rows, skipping those whose key exists already (a redelivery); returns the rows inserted.

    PostgreSQL: COPY into a staging table, then one INSERT ... SELECT (see below). Elsewhere (SQLite,
    the embedded run): one executemany.
    """
    if not rows:
        return 0
    names = ", ".join(columns)
    if connection.vendor == "postgresql":
        return _copy_insert_postgresql(table, columns, rows)
    with connection.cursor() as cursor:
        adapt = connection.ops.adapt_datetimefield_value
        adapted = [tuple(adapt(v) if isinstance(v, dt.datetime) else v for v in row) for row in rows]
        placeholders = ", ".join("%s" for _ in columns)
        before = connection.connection.total_changes
        cursor.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",  # noqa: S608
            adapted,
        )
        return connection.connection.total_changes - before


def _copy_insert_postgresql(table: str, columns: list[str], rows: list[tuple]) -> int:
    """COPY the rows into a per-connection temporary table, then move them with ON CONFLICT DO NOTHING.

    COPY is the fastest way into PostgreSQL but cannot skip existing keys; the second statement can.
    The temporary table empties itself at commit (ON COMMIT DELETE ROWS) and lives as long as the
    connection, so it is created once per worker connection.
    """
    names = ", ".join(columns)
    staging = f"ingest_staging_{table}"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} ON CONFLICT DO NOTHING"  # noqa: S608
        )
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {staging}")
        return inserted


def store_inference_records(messages: list[DeviceMessage]) -> list[Rejection]:
    rejections, rows, dirty = [], [], set()
    for message in messages:
        now_ms = int(message.received_at.timestamp() * 1000)
        try:
            records = schemas.parse_telemetry(message.body, now=now_ms)
        except schemas.SchemaError as exc:
            rejections.append(Rejection(message=message, reason=exc.reason, detail=exc.detail))
            continue
        for index, record in enumerate(records):
            ts = schemas.ms_to_datetime(record.ts_ms)
            rows.append(
                (
                    message.device_id,
                    message.seq,
                    index,
                    ts,
                    message.received_at,
                    record.task,
                    record.model,
                    record.model_version,
                    record.latency_ms,
                    record.confidence,
                    record.label,
                    record.route,
                    record.cloud_model,
                    record.tokens_in,
                    record.tokens_out,
                    record.error,
                )
            )
            dirty.add((message.device_id, record.ts_ms // 60_000))
    inserted = insert_ignoring_conflicts("telemetry_inferencerecord", INFERENCE_RECORD_COLUMNS, rows)
    count_rows_written("inference_records", inserted)
    if inserted:
        # Minutes whose rollup must be recomputed (telemetry/rollups.py); a pure redelivery changes nothing.
        insert_ignoring_conflicts(
            "telemetry_rollupdirtyminute",
            ["device_id", "minute"],
            [(device_id, schemas.ms_to_datetime(minute * 60_000)) for device_id, minute in sorted(dirty)],
        )
    return rejections


def store_heartbeats(messages: list[DeviceMessage]) -> list[Rejection]:
    rejections, rows = [], []
    for message in messages:
        try:
            beat = schemas.parse_heartbeat(message.body)
        except schemas.SchemaError as exc:
            rejections.append(Rejection(message=message, reason=exc.reason, detail=exc.detail))
            continue
        rows.append(
            (
                message.device_id,
                message.seq,
                message.ts,
                message.received_at,
                beat.cpu_pct,
                beat.mem_pct,
                beat.disk_pct,
                beat.temp_c,
                json.dumps(beat.models),
                beat.buffer_depth,
                beat.dropped,
                beat.agent_version,
            )
        )
    count_rows_written("heartbeats", insert_ignoring_conflicts("telemetry_heartbeat", HEARTBEAT_COLUMNS, rows))
    return rejections


def apply_status(presence: DevicePresence, *, seq: int, online: bool, ts: dt.datetime) -> str | None:
    """Apply one status message to the presence (the caller saves it; status_seq 0 means none yet) and
    return the transition's cause (``PresenceCause``), or None when the message changes nothing.

    Order is the device's seq, not arrival: a newer seq wins. One exception makes the last will work:
    the agent reserves its will's seq when it connects, just before publishing ``online`` with a higher
    seq, so the will (``offline``) arrives after that ``online`` with a lower seq. An ``offline`` whose
    seq lies between the status before the current ``online`` and that ``online`` is this connection's
    will: it applies, and the current seq stays, so a redelivered copy of the ``online`` stays stale.
    A newer ``offline`` is the agent's own goodbye (a clean disconnect).
    """
    if seq > presence.status_seq:
        presence.before_seq = presence.status_seq
        presence.status_seq, presence.online, presence.status_ts = seq, online, ts
        return PresenceCause.CONNECT if online else PresenceCause.DISCONNECT
    if not online and presence.online and presence.before_seq < seq < presence.status_seq:
        presence.online = False
        return PresenceCause.WILL
    return None  # stale or a redelivery


def store_status(messages: list[DeviceMessage]) -> list[Rejection]:
    rejections, by_device = [], defaultdict(list)
    for message in messages:
        try:
            state = schemas.parse_status(message.body)
        except schemas.SchemaError as exc:
            rejections.append(Rejection(message=message, reason=exc.reason, detail=exc.detail))
            continue
        by_device[message.device_id].append((message.seq, state == "online", message.ts, message.received_at))
    if not by_device:
        return rejections
    # Two workers may hold status messages of the same device (shared subscription): the presence row is
    # created if missing (a conflict means another worker made it), then read and written under its row
    # lock, taken in device-id order so that two batches cannot deadlock. The history is written under the
    # same lock, so each transition is recorded once.
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    DevicePresence.objects.bulk_create(
        [DevicePresence(device_id=d, status_seq=0, online=False, status_ts=epoch) for d in sorted(by_device)],
        ignore_conflicts=True,
    )
    locked = DevicePresence.objects.select_for_update().filter(device_id__in=by_device).order_by("device_id")
    history = []
    for presence in locked:
        for seq, online, ts, received_at in sorted(by_device[presence.device_id]):
            cause = apply_status(presence, seq=seq, online=online, ts=ts)
            if cause is not None:
                history.append(
                    PresenceEvent(
                        device_id=presence.device_id,
                        seq=seq,
                        online=online,
                        cause=cause,
                        # The will's ts is from when the agent connected; the broker sends it on the loss.
                        at=received_at if cause == PresenceCause.WILL else ts,
                        received_at=received_at,
                    )
                )
        presence.save(update_fields=["status_seq", "before_seq", "online", "status_ts"])
        Device.objects.filter(pk=presence.device_id).exclude(online=presence.online).update(online=presence.online)
    PresenceEvent.objects.bulk_create(history)
    return rejections


SINKS: dict[str, Sink] = {
    schemas.LEAF_TELEMETRY: store_inference_records,
    schemas.LEAF_HEARTBEAT: store_heartbeats,
    schemas.LEAF_STATUS: store_status,
    schemas.LEAF_LLM_USAGE: store_llm_usage,
    schemas.LEAF_OTA_STATUS: store_ota_status,
}
