"""Wire schemas of the device-to-platform MQTT messages: builders for the agent, validators for the platform.

Pure functions, no Django, so the agent builds messages with the same rules the ingest worker checks
(docs/protocol.md is the prose version). Every validator raises SchemaError with a machine-readable
``reason`` (the dead-letter reason on the platform) and a human ``detail``.

Envelope of every body: one UTF-8 JSON object with ``v`` (PROTOCOL_VERSION), ``seq`` (int >= 1, per-device
monotonic across all topics) and ``ts`` (int, milliseconds since the Unix epoch, the device's clock). The
device id is never in the body: the topic names the device.
"""

import datetime as dt
import json
import math
from dataclasses import dataclass

from fleet_agent.protocol import PROTOCOL_VERSION

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RECORDS_PER_MESSAGE = 500
MAX_SEQ = 2**63 - 1  # stored as a signed 64-bit integer
# Plausible device clocks: not before 2020 (an unset RTC reads 1970), not more than a day ahead.
MIN_TS_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
MAX_FUTURE_MS = 24 * 3600 * 1000

# Topic leaves (the part after devices/{id}/) and their QoS / retain flags.
LEAF_TELEMETRY = "telemetry"
LEAF_HEARTBEAT = "heartbeat"
LEAF_STATUS = "status"
LEAF_OTA_STATUS = "ota/status"
LEAF_LLM_USAGE = "llm/usage"
DEVICE_TO_PLATFORM_LEAVES = (LEAF_TELEMETRY, LEAF_HEARTBEAT, LEAF_STATUS, LEAF_OTA_STATUS, LEAF_LLM_USAGE)
QOS = 1
RETAINED_LEAVES = frozenset({LEAF_STATUS})

ROUTES = ("local", "cloud", "denied")
STATES = ("online", "offline")
# Keys that would name a device inside a body; the topic is the only truth, so a body naming another
# device is rejected (reason "device_mismatch").
DEVICE_ID_KEYS = ("device", "device_id")

# Field size limits (the platform's columns).
MAX_NAME_LEN = 128
MAX_VERSION_LEN = 64
MAX_LABEL_LEN = 128
MAX_ERROR_LEN = 64
MAX_TASK_LEN = 64


class SchemaError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Envelope:
    seq: int
    ts_ms: int
    body: dict

    @property
    def ts(self) -> dt.datetime:
        return ms_to_datetime(self.ts_ms)


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


# --- validation helpers ----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _require(body: dict, key: str, where: str = ""):
    if key not in body:
        raise SchemaError("field_missing", f"{where}{key}")
    return body[key]


def _int_field(body: dict, key: str, *, minimum: int = 0, maximum: int = MAX_SEQ, where: str = "") -> int:
    value = _require(body, key, where)
    if not _is_int(value):
        raise SchemaError("field_type", f"{where}{key} must be an integer")
    if not minimum <= value <= maximum:
        raise SchemaError("field_value", f"{where}{key} must be in {minimum}..{maximum}")
    return value


def _number_field(
    body: dict, key: str, *, minimum: float, maximum: float, nullable: bool = False, where: str = ""
) -> float | None:
    value = _require(body, key, where)
    if value is None and nullable:
        return None
    if not _is_number(value):
        raise SchemaError("field_type", f"{where}{key} must be a number")
    if not minimum <= value <= maximum:
        raise SchemaError("field_value", f"{where}{key} must be in {minimum}..{maximum}")
    return float(value)


def _str_field(body: dict, key: str, *, max_len: int, nullable: bool = False, where: str = "") -> str | None:
    value = _require(body, key, where)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise SchemaError("field_type", f"{where}{key} must be a string")
    if not value or len(value) > max_len:
        raise SchemaError("field_value", f"{where}{key} must have 1..{max_len} characters")
    if "\x00" in value:
        raise SchemaError("field_value", f"{where}{key} must not contain NUL characters")
    return value


def check_ts_ms(ts_ms: int, *, now: int, where: str = "ts") -> None:
    if ts_ms < MIN_TS_MS or ts_ms > now + MAX_FUTURE_MS:
        raise SchemaError("ts_out_of_range", f"{where}={ts_ms} is before 2020 or more than a day ahead")


# --- envelope --------------------------------------------------------------------------------------


def parse_envelope(payload: bytes, *, device_id: str, now: int | None = None) -> Envelope:
    """Decode and check the envelope of a message body published on devices/{device_id}/..."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError("payload_too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError("invalid_json", str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise SchemaError("not_object", f"the body is a JSON {type(body).__name__}, not an object")
    version = body.get("v")
    if "v" not in body:
        raise SchemaError("field_missing", "v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise SchemaError("unsupported_version", f"v={version!r}; this platform speaks v={PROTOCOL_VERSION}")
    for key in DEVICE_ID_KEYS:
        if key in body and body[key] != device_id:
            raise SchemaError("device_mismatch", f"the body names {body[key]!r} but the topic names {device_id!r}")
    seq = _int_field(body, "seq", minimum=1)
    ts_ms = _int_field(body, "ts", minimum=0)
    check_ts_ms(ts_ms, now=now_ms() if now is None else now)
    return Envelope(seq=seq, ts_ms=ts_ms, body=body)


# --- bodies ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceRecord:
    ts_ms: int
    task: str
    model: str
    model_version: str
    latency_ms: float
    confidence: float | None
    label: str | None
    route: str
    cloud_model: str | None
    tokens_in: int
    tokens_out: int
    error: str | None


def parse_record(record, *, index: int, now: int) -> InferenceRecord:
    where = f"records[{index}]."
    if not isinstance(record, dict):
        raise SchemaError("field_type", f"records[{index}] must be an object")
    ts_ms = _int_field(record, "ts", where=where)
    check_ts_ms(ts_ms, now=now, where=f"{where}ts")
    route = _str_field(record, "route", max_len=8, where=where)
    if route not in ROUTES:
        raise SchemaError("field_value", f"{where}route must be one of {', '.join(ROUTES)}")
    return InferenceRecord(
        ts_ms=ts_ms,
        task=_str_field(record, "task", max_len=MAX_TASK_LEN, where=where),
        model=_str_field(record, "model", max_len=MAX_NAME_LEN, where=where),
        model_version=_str_field(record, "model_version", max_len=MAX_VERSION_LEN, where=where),
        latency_ms=_number_field(record, "latency_ms", minimum=0, maximum=1e9, where=where),
        confidence=_number_field(record, "confidence", minimum=0, maximum=1, nullable=True, where=where),
        label=_str_field(record, "label", max_len=MAX_LABEL_LEN, nullable=True, where=where),
        route=route,
        cloud_model=_str_field(record, "cloud_model", max_len=MAX_NAME_LEN, nullable=True, where=where),
        tokens_in=_int_field(record, "tokens_in", maximum=2**31 - 1, where=where),
        tokens_out=_int_field(record, "tokens_out", maximum=2**31 - 1, where=where),
        error=_str_field(record, "error", max_len=MAX_ERROR_LEN, nullable=True, where=where),
    )


def _str_ok(value, max_len: int, nullable: bool) -> bool:
    if value is None:
        return nullable
    return type(value) is str and 0 < len(value) <= max_len and "\x00" not in value


def _fast_record(record, now: int) -> InferenceRecord | None:
    """The common case in one pass (the ingest hot path); None if anything is off, and the caller then
    runs parse_record, which finds and names the problem. Same rules as parse_record."""
    if type(record) is not dict:
        return None
    try:
        ts_ms, task, model, version = record["ts"], record["task"], record["model"], record["model_version"]
        latency, confidence, label, route = record["latency_ms"], record["confidence"], record["label"], record["route"]
        cloud_model, tokens_in, tokens_out = record["cloud_model"], record["tokens_in"], record["tokens_out"]
        error = record["error"]
    except KeyError:
        return None
    if not (
        type(ts_ms) is int
        and MIN_TS_MS <= ts_ms <= now + MAX_FUTURE_MS
        and route in ROUTES
        and type(latency) in (int, float)
        and 0 <= latency <= 1e9
        and (confidence is None or (type(confidence) in (int, float) and 0 <= confidence <= 1))
        and type(tokens_in) is int
        and 0 <= tokens_in <= 2**31 - 1
        and type(tokens_out) is int
        and 0 <= tokens_out <= 2**31 - 1
        and _str_ok(task, MAX_TASK_LEN, False)
        and _str_ok(model, MAX_NAME_LEN, False)
        and _str_ok(version, MAX_VERSION_LEN, False)
        and _str_ok(label, MAX_LABEL_LEN, True)
        and _str_ok(cloud_model, MAX_NAME_LEN, True)
        and _str_ok(error, MAX_ERROR_LEN, True)
    ):
        return None
    return InferenceRecord(
        ts_ms,
        task,
        model,
        version,
        float(latency),
        None if confidence is None else float(confidence),
        label,
        route,
        cloud_model,
        tokens_in,
        tokens_out,
        error,
    )


def parse_telemetry(body: dict, *, now: int | None = None) -> list[InferenceRecord]:
    now = now_ms() if now is None else now
    records = _require(body, "records")
    if not isinstance(records, list):
        raise SchemaError("field_type", "records must be an array")
    if not 1 <= len(records) <= MAX_RECORDS_PER_MESSAGE:
        raise SchemaError("field_value", f"records must hold 1..{MAX_RECORDS_PER_MESSAGE} records")
    parsed = []
    for i, record in enumerate(records):
        fast = _fast_record(record, now)
        parsed.append(fast if fast is not None else parse_record(record, index=i, now=now))
    return parsed


@dataclass(frozen=True)
class Heartbeat:
    cpu_pct: float
    mem_pct: float
    disk_pct: float
    temp_c: float | None
    models: list[dict]
    buffer_depth: int
    dropped: int
    agent_version: str


def parse_heartbeat(body: dict) -> Heartbeat:
    models = _require(body, "models")
    if not isinstance(models, list) or len(models) > 32:
        raise SchemaError("field_type", "models must be an array of at most 32 objects")
    for i, model in enumerate(models):
        if not isinstance(model, dict):
            raise SchemaError("field_type", f"models[{i}] must be an object")
        _str_field(model, "name", max_len=MAX_NAME_LEN, where=f"models[{i}].")
        _str_field(model, "version", max_len=MAX_VERSION_LEN, where=f"models[{i}].")
        if model.get("slot") is not None:
            _str_field(model, "slot", max_len=MAX_VERSION_LEN, where=f"models[{i}].")
    return Heartbeat(
        cpu_pct=_number_field(body, "cpu_pct", minimum=0, maximum=100 * 1024),
        mem_pct=_number_field(body, "mem_pct", minimum=0, maximum=100),
        disk_pct=_number_field(body, "disk_pct", minimum=0, maximum=100),
        temp_c=_number_field(body, "temp_c", minimum=-100, maximum=200, nullable=True),
        models=[{"name": m["name"], "version": m["version"], "slot": m.get("slot")} for m in models],
        buffer_depth=_int_field(body, "buffer_depth", maximum=2**63 - 1),
        dropped=_int_field(body, "dropped", maximum=2**63 - 1),
        agent_version=_str_field(body, "agent_version", max_len=MAX_VERSION_LEN),
    )


def parse_status(body: dict) -> str:
    state = _require(body, "state")
    if state not in STATES:
        raise SchemaError("field_value", f"state must be one of {', '.join(STATES)}")
    return state


# --- builders (the agent) --------------------------------------------------------------------------


def envelope(*, seq: int, ts_ms: int | None = None, **fields) -> dict:
    return {"v": PROTOCOL_VERSION, "seq": seq, "ts": now_ms() if ts_ms is None else ts_ms, **fields}


def inference_record(
    *,
    task: str,
    model: str,
    model_version: str,
    latency_ms: float,
    route: str = "local",
    ts_ms: int | None = None,
    confidence: float | None = None,
    label: str | None = None,
    cloud_model: str | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    error: str | None = None,
) -> dict:
    return {
        "ts": now_ms() if ts_ms is None else ts_ms,
        "task": task,
        "model": model,
        "model_version": model_version,
        "latency_ms": latency_ms,
        "confidence": confidence,
        "label": label,
        "route": route,
        "cloud_model": cloud_model,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "error": error,
    }


def telemetry_message(*, seq: int, records: list[dict], ts_ms: int | None = None) -> dict:
    return envelope(seq=seq, ts_ms=ts_ms, records=records)


def heartbeat_message(
    *,
    seq: int,
    cpu_pct: float,
    mem_pct: float,
    disk_pct: float,
    models: list[dict],
    buffer_depth: int,
    dropped: int,
    agent_version: str,
    temp_c: float | None = None,
    ts_ms: int | None = None,
) -> dict:
    return envelope(
        seq=seq,
        ts_ms=ts_ms,
        cpu_pct=cpu_pct,
        mem_pct=mem_pct,
        disk_pct=disk_pct,
        temp_c=temp_c,
        models=models,
        buffer_depth=buffer_depth,
        dropped=dropped,
        agent_version=agent_version,
    )


def status_message(*, seq: int, state: str, ts_ms: int | None = None) -> dict:
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}")
    return envelope(seq=seq, ts_ms=ts_ms, state=state)


def encode(body: dict) -> bytes:
    """The wire bytes of a body (compact JSON, UTF-8); raises SchemaError if it is too large to send."""
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError("payload_too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    return payload
