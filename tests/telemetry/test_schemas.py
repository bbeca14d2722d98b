"""fleet_agent.schemas: what the agent builds is what the platform accepts, and every rule has a reason."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_agent import schemas

NOW = schemas.now_ms()


def record(**overrides) -> dict:
    fields = {"task": "detect", "model": "yolo-n", "model_version": "1.2.0", "latency_ms": 12.5, "ts_ms": NOW}
    fields.update(overrides)
    return schemas.inference_record(**fields)


def test_built_telemetry_message_round_trips():
    body = schemas.telemetry_message(seq=5, records=[record(), record(route="cloud", cloud_model="gpt-4o-mini")])
    env = schemas.parse_envelope(schemas.encode(body), device_id="cam-1", now=NOW)
    assert (env.seq, env.ts_ms) == (5, body["ts"])
    parsed = schemas.parse_telemetry(env.body, now=NOW)
    assert [r.route for r in parsed] == ["local", "cloud"]
    assert parsed[1].cloud_model == "gpt-4o-mini"


def test_built_heartbeat_and_status_round_trip():
    beat = schemas.heartbeat_message(
        seq=1,
        cpu_pct=1,
        mem_pct=2,
        disk_pct=3,
        models=[{"name": "a", "version": "1"}],
        buffer_depth=0,
        dropped=0,
        agent_version="0.1.0",
    )
    assert schemas.parse_heartbeat(beat).models == [{"name": "a", "version": "1", "slot": None}]
    assert schemas.parse_status(schemas.status_message(seq=2, state="offline")) == "offline"
    with pytest.raises(ValueError):
        schemas.status_message(seq=2, state="asleep")


def test_encode_refuses_a_body_over_the_limit():
    with pytest.raises(schemas.SchemaError) as err:
        schemas.encode({"v": 1, "seq": 1, "ts": NOW, "pad": "x" * schemas.MAX_PAYLOAD_BYTES})
    assert err.value.reason == "payload_too_large"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("latency_ms", -1, "field_value"),
        ("latency_ms", True, "field_type"),
        ("latency_ms", "12", "field_type"),
        ("confidence", 1.5, "field_value"),
        ("route", "edge", "field_value"),
        ("task", "", "field_value"),
        ("model", 7, "field_type"),
        ("tokens_in", 1.0, "field_type"),
        ("error", "e" * 65, "field_value"),
        ("ts", NOW + 2 * 86_400_000, "ts_out_of_range"),
    ],
)
def test_invalid_record_field_is_named_with_its_reason(field, value, reason):
    rec = record()
    rec[field] = value
    with pytest.raises(schemas.SchemaError) as err:
        schemas.parse_telemetry({"records": [record(), rec]}, now=NOW)
    assert err.value.reason == reason
    assert f"records[1].{field}" in err.value.detail


def test_missing_record_field_is_named():
    rec = record()
    del rec["label"]
    with pytest.raises(schemas.SchemaError) as err:
        schemas.parse_telemetry({"records": [rec]}, now=NOW)
    assert (err.value.reason, err.value.detail) == ("field_missing", "records[0].label")


def test_integer_latency_is_accepted_as_a_number():
    assert schemas.parse_telemetry({"records": [record(latency_ms=12)]}, now=NOW)[0].latency_ms == 12.0


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=140),
    st.sampled_from(["local", "cloud", "denied"]),
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(record())), value=values)
def test_fast_path_agrees_with_the_detailed_validator(field, value):
    rec = record()
    rec[field] = value
    try:
        slow = schemas.parse_record(rec, index=0, now=NOW)
    except schemas.SchemaError:
        slow = None
    fast = schemas._fast_record(rec, NOW)
    assert fast == slow or fast is None  # the fast path may defer, never accept what the rules refuse
    try:
        via_parse = schemas.parse_telemetry({"records": [rec]}, now=NOW)[0]
    except schemas.SchemaError:
        via_parse = None
    assert via_parse == slow


def test_envelope_ignores_unknown_keys_and_accepts_own_device_id():
    payload = json.dumps({"v": 1, "seq": 3, "ts": NOW, "device_id": "cam-1", "extra": [1]}).encode()
    assert schemas.parse_envelope(payload, device_id="cam-1", now=NOW).seq == 3
