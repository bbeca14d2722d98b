"""The contract between the MQTT ingest worker and the apps that store what devices report.

The worker (telemetry/management/commands/ingest.py) parses the envelope of every message (schema
version ``v``, per-device monotonic ``seq``, device ``ts``; the device id comes from the topic, never
from the payload), then hands each topic's messages, as one batch, to that topic's sink, inside the
transaction that is committed before the broker gets its acknowledgements. Sinks are listed in
telemetry/sinks.py by topic leaf:

    devices/{id}/telemetry   -> telemetry
    devices/{id}/heartbeat   -> telemetry
    devices/{id}/status      -> telemetry (presence)
    devices/{id}/ota/status  -> ota
    devices/{id}/llm/usage   -> policies

A sink is a function ``store(messages: list[DeviceMessage]) -> list[Rejection]``. It validates each
message body, writes the valid ones idempotently on (device_id, seq) (a unique constraint and
INSERT ... ON CONFLICT DO NOTHING, so a redelivered message is stored once), and returns a Rejection for
each invalid one; the worker puts those in the dead-letter table with the raw bytes and the reason.
A sink must not commit, must not swallow database errors (the worker retries the whole batch), and must
not call the broker.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceMessage:
    device_id: str  # from the topic: the truth
    leaf: str  # the topic after devices/{id}/, e.g. "telemetry", "ota/status"
    seq: int
    ts: dt.datetime  # the device's clock, already checked to be plausible
    body: dict  # the whole decoded JSON object, envelope fields included
    raw: bytes
    received_at: dt.datetime


@dataclass(frozen=True)
class Rejection:
    message: DeviceMessage
    reason: str  # machine-readable, e.g. "field_missing", "field_type", "unknown_release"
    detail: str = ""


Sink = Callable[[list[DeviceMessage]], list[Rejection]]


# --- optional: rows-written accounting ------------------------------------------------------------
# A sink may report how many rows it actually inserted (conflicts excluded) so that the worker's
# ``rows_written{table=...}`` counter covers it; sinks that don't call this are simply not counted.
_rows_written: dict[str, int] = {}


def count_rows_written(table: str, rows: int) -> None:
    _rows_written[table] = _rows_written.get(table, 0) + rows


def take_rows_written() -> dict[str, int]:
    """Return and reset the rows counted since the last call (the worker calls it once per batch)."""
    counted = dict(_rows_written)
    _rows_written.clear()
    return counted
