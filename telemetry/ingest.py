"""One batch of MQTT messages in, one transaction out: the pure part of the ingest worker.

`ingest_batch` takes raw (topic, payload) messages, checks each envelope, hands each topic's valid
messages to its sink (telemetry/sinks.py), puts everything else in the dead-letter table, and adds the
batch's counters, all in one transaction. The worker (management/commands/ingest.py) acknowledges the
batch to the broker only after this returns; tests call it without a broker.
"""

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from django.db import InterfaceError, OperationalError, transaction

from fleet_agent import schemas
from fleet_agent.protocol import is_valid_device_id
from telemetry import services
from telemetry.ingest_contract import DeviceMessage, Rejection, Sink, take_rows_written
from telemetry.models import DeadLetter
from telemetry.sinks import SINKS

log = logging.getLogger(__name__)

# Connection-level failures: the whole batch is retried later (nothing is acknowledged meanwhile).
# Any other database error raised by a sink is about the data (a value too long, a constraint): that
# topic's messages of the batch become dead letters, so one bad message cannot wedge the worker.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    received_at: dt.datetime


@dataclass
class BatchResult:
    messages: int = 0
    accepted: int = 0  # handed to a sink and not rejected (stored, or a redelivery of a stored message)
    dead_letters: Counter = field(default_factory=Counter)  # by reason
    rows_written: dict[str, int] = field(default_factory=dict)
    devices_seen: set[str] = field(default_factory=set)


def split_topic(topic: str) -> tuple[str, str] | None:
    """devices/{id}/{leaf} -> (id, leaf), or None for any other topic."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != "devices" or not is_valid_device_id(parts[1]) or not parts[2]:
        return None
    return parts[1], parts[2]


def _dead_letter(message: InboundMessage, device_id: str | None, reason: str, detail: str = "") -> DeadLetter:
    return DeadLetter(
        received_at=message.received_at,
        topic=message.topic[:512],
        device_id=device_id,
        reason=reason,
        detail=detail[:2000],
        payload=bytes(message.payload),
    )


def _device_dead_letter(msg: DeviceMessage, reason: str, detail: str = "") -> DeadLetter:
    inbound = InboundMessage(topic=f"devices/{msg.device_id}/{msg.leaf}", payload=msg.raw, received_at=msg.received_at)
    return _dead_letter(inbound, msg.device_id, reason, detail)


def ingest_batch(
    messages: list[InboundMessage], *, sinks: dict[str, Sink] | None = None, extra_counters: dict | None = None
) -> BatchResult:
    """Store one batch in one transaction; raises a TRANSIENT_DB_ERRORS error when the database is away."""
    started = time.monotonic()
    sinks = SINKS if sinks is None else sinks
    result = BatchResult(messages=len(messages))
    dead: list[DeadLetter] = []
    by_leaf: dict[str, list[DeviceMessage]] = {}
    for message in messages:
        split = split_topic(message.topic)
        if split is None:
            dead.append(_dead_letter(message, None, "invalid_topic"))
            continue
        device_id, leaf = split
        sink = sinks.get(leaf)
        if sink is None:
            dead.append(_dead_letter(message, device_id, "unsupported_topic", f"no sink for {leaf!r}"))
            continue
        try:
            env = schemas.parse_envelope(
                message.payload, device_id=device_id, now=int(message.received_at.timestamp() * 1000)
            )
        except schemas.SchemaError as exc:
            dead.append(_dead_letter(message, device_id, exc.reason, exc.detail))
            continue
        by_leaf.setdefault(leaf, []).append(
            DeviceMessage(
                device_id=device_id,
                leaf=leaf,
                seq=env.seq,
                ts=env.ts,
                body=env.body,
                raw=message.payload,
                received_at=message.received_at,
            )
        )

    take_rows_written()  # drop leftovers of a batch that failed before it could count
    with transaction.atomic():
        # A revoked device keeps an open connection until it drops (the broker checks the revocation list
        # at the TLS handshake only): nothing it sends after its revocation is stored.
        revoked = services.devices_revoked(device_ids={m.device_id for msgs in by_leaf.values() for m in msgs})
        for leaf, leaf_messages in by_leaf.items():
            if revoked:
                dead += [_device_dead_letter(m, "device_revoked") for m in leaf_messages if m.device_id in revoked]
                leaf_messages = [m for m in leaf_messages if m.device_id not in revoked]
            rejections = _run_sink(sinks[leaf], leaf, leaf_messages) if leaf_messages else []
            rejected = {id(r.message) for r in rejections}
            for rejection in rejections:
                dead.append(_device_dead_letter(rejection.message, rejection.reason, rejection.detail))
            for msg in leaf_messages:
                if id(msg) not in rejected:
                    result.accepted += 1
                    result.devices_seen.add(msg.device_id)
        DeadLetter.objects.bulk_create(dead)
        result.dead_letters = Counter(d.reason for d in dead)
        result.rows_written = take_rows_written()
        counters = Counter(extra_counters or {})
        counters["messages_in"] += result.messages
        counters["messages_stored"] += result.accepted
        counters["batches"] += 1
        counters["batch_seconds_sum"] += time.monotonic() - started
        for reason, count in result.dead_letters.items():
            counters[f'dead_letters{{reason="{reason}"}}'] += count
        for table, count in result.rows_written.items():
            counters[f'rows_written{{table="{table}"}}'] += count
        services.counters_add(counters)
    return result


def _run_sink(sink: Sink, leaf: str, messages: list[DeviceMessage]) -> list[Rejection]:
    """Run a sink in a savepoint. If it fails on something other than the connection, run it again one
    message at a time, so that only the messages it cannot take become dead letters (``sink_error``)."""
    try:
        with transaction.atomic():  # a savepoint: a failing sink leaves the rest of the batch intact
            return sink(messages)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception:
        log.exception("the %s sink failed on a batch of %d messages; retrying them one by one", leaf, len(messages))
        take_rows_written()
    rejections = []
    for message in messages:
        try:
            with transaction.atomic():
                rejections += sink([message])
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:
            take_rows_written()
            detail = f"{type(exc).__name__}: {exc}"[:500]
            rejections.append(Rejection(message=message, reason="sink_error", detail=detail))
    return rejections
