"""The ingest worker's per-batch function, without a broker: storage, dedup, dead letters, presence."""

import datetime as dt
import json

import pytest
from django.db import connection
from django.utils import timezone

from devices.models import Device
from fleet_agent import schemas
from telemetry import services
from telemetry.ingest import InboundMessage, ingest_batch
from telemetry.models import DeadLetter, DevicePresence, Heartbeat, InferenceRecord, IngestCounter, RollupDirtyMinute
from tests.factories import make_device

pytestmark = pytest.mark.django_db


def record(**overrides) -> dict:
    fields = {"task": "detect", "model": "yolo-n", "model_version": "1.2.0", "latency_ms": 12.5, "confidence": 0.9}
    fields.update(overrides)
    return schemas.inference_record(**fields)


def msg(device_id: str, leaf: str, body, *, raw: bytes | None = None) -> InboundMessage:
    payload = raw if raw is not None else json.dumps(body).encode()
    return InboundMessage(topic=f"devices/{device_id}/{leaf}", payload=payload, received_at=timezone.now())


def telemetry(device_id: str, seq: int, n: int = 1, **body) -> InboundMessage:
    return msg(device_id, "telemetry", schemas.telemetry_message(seq=seq, records=[record() for _ in range(n)]) | body)


def status(device_id: str, seq: int, state: str) -> InboundMessage:
    return msg(device_id, "status", schemas.status_message(seq=seq, state=state))


def heartbeat(device_id: str, seq: int) -> InboundMessage:
    body = schemas.heartbeat_message(
        seq=seq,
        cpu_pct=12.0,
        mem_pct=40.0,
        disk_pct=70.0,
        temp_c=51.5,
        models=[{"name": "yolo-n", "version": "1.2.0", "slot": "a"}],
        buffer_depth=3,
        dropped=0,
        agent_version="0.1.0",
    )
    return msg(device_id, "heartbeat", body)


def counter(name: str) -> float:
    row = IngestCounter.objects.filter(name=name).first()
    return row.value if row else 0


def test_records_are_stored_with_their_fields_and_index():
    result = ingest_batch([telemetry("cam-1", 1, n=3)])
    assert result.accepted == 1 and not result.dead_letters
    rows = list(InferenceRecord.objects.filter(device_id="cam-1").order_by("idx"))
    assert [(r.seq, r.idx) for r in rows] == [(1, 0), (1, 1), (1, 2)]
    assert rows[0].model_name == "yolo-n" and rows[0].model_version == "1.2.0" and rows[0].route == "local"
    assert rows[0].latency_ms == 12.5 and rows[0].confidence == 0.9 and rows[0].error is None
    assert counter('rows_written{table="inference_records"}') == 3


def test_redelivered_message_is_stored_once():
    first = telemetry("cam-1", 7, n=2)
    ingest_batch([first, first])  # twice in one batch
    ingest_batch([first])  # and again in a later batch (redelivery after a crash)
    assert InferenceRecord.objects.filter(device_id="cam-1").count() == 2
    assert counter("messages_in") == 3
    assert counter('rows_written{table="inference_records"}') == 2


def test_same_seq_on_two_devices_is_two_messages():
    ingest_batch([telemetry("cam-1", 1), telemetry("cam-2", 1)])
    assert InferenceRecord.objects.count() == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "not_object"),
        (json.dumps({"seq": 1, "ts": schemas.now_ms(), "records": []}).encode(), "field_missing"),
        (json.dumps({"v": 2, "seq": 1, "ts": schemas.now_ms()}).encode(), "unsupported_version"),
        (json.dumps({"v": "1", "seq": 1, "ts": schemas.now_ms()}).encode(), "unsupported_version"),
        (json.dumps({"v": 1, "ts": schemas.now_ms()}).encode(), "field_missing"),
        (json.dumps({"v": 1, "seq": "3", "ts": schemas.now_ms()}).encode(), "field_type"),
        (json.dumps({"v": 1, "seq": 0, "ts": schemas.now_ms()}).encode(), "field_value"),
        (json.dumps({"v": 1, "seq": 1, "ts": 1.5e12}).encode(), "field_type"),
        (json.dumps({"v": 1, "seq": 1, "ts": 1000}).encode(), "ts_out_of_range"),
        (json.dumps({"v": 1, "seq": 1, "ts": schemas.now_ms() + 2 * 86_400_000}).encode(), "ts_out_of_range"),
        (b"{" + b" " * (256 * 1024) + b"}", "payload_too_large"),
        (
            json.dumps({"v": 1, "seq": 1, "ts": schemas.now_ms(), "device_id": "cam-2", "records": []}).encode(),
            "device_mismatch",
        ),
        (json.dumps({"v": 1, "seq": 1, "ts": schemas.now_ms(), "records": []}).encode(), "field_value"),
        (json.dumps({"v": 1, "seq": 1, "ts": schemas.now_ms(), "records": [{"ts": 1}]}).encode(), "ts_out_of_range"),
    ],
)
def test_bad_message_goes_to_dead_letters_with_its_reason_and_bytes(payload, reason):
    good = telemetry("cam-1", 1)
    result = ingest_batch([msg("cam-1", "telemetry", None, raw=payload), good])
    assert result.dead_letters == {reason: 1}
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.device_id, letter.topic) == (reason, "cam-1", "devices/cam-1/telemetry")
    assert bytes(letter.payload) == payload
    assert counter(f'dead_letters{{reason="{reason}"}}') == 1
    assert InferenceRecord.objects.count() == 1  # the good message of the same batch is stored


def test_record_with_wrong_field_type_rejects_the_whole_message():
    body = schemas.telemetry_message(seq=3, records=[record(), record(latency_ms="fast")])
    result = ingest_batch([msg("cam-1", "telemetry", body)])
    assert result.dead_letters == {"field_type": 1}
    assert "records[1].latency_ms" in DeadLetter.objects.get().detail
    assert InferenceRecord.objects.count() == 0


def test_topic_without_sink_is_dead_lettered_as_unsupported():
    result = ingest_batch([msg("cam-1", "camera/snapshot", schemas.envelope(seq=1, state="installing"))])
    assert result.dead_letters == {"unsupported_topic": 1}


def test_ota_status_goes_to_the_ota_sink():
    make_device("cam-ota")
    result = ingest_batch([msg("cam-ota", "ota/status", schemas.envelope(seq=1, target="x", state="bogus"))])
    # The OTA sink validated it (and refused the unknown state): it was not "unsupported".
    assert result.dead_letters == {"unknown_state": 1}


def test_llm_usage_goes_to_the_policies_sink():
    from policies.models import LlmUsage

    make_device("cam-llm")
    body = schemas.envelope(seq=4, task="summarize", data_class="personal", route="local", reason="egress_never")
    result = ingest_batch([msg("cam-llm", "llm/usage", body)])
    assert result.accepted == 1 and not result.dead_letters
    assert LlmUsage.objects.filter(device_id="cam-llm", seq=4).count() == 1


def test_sink_that_crashes_dead_letters_its_messages_and_the_rest_is_stored():
    def broken(messages):
        raise KeyError("bug")

    from telemetry.sinks import SINKS

    result = ingest_batch(
        [msg("cam-1", "ota/status", schemas.envelope(seq=2)), telemetry("cam-1", 3)],
        sinks={**SINKS, "ota/status": broken},
    )
    assert result.dead_letters == {"sink_error": 1}
    assert InferenceRecord.objects.count() == 1


def test_a_message_the_sink_cannot_take_does_not_take_its_batch_mates_down():
    calls = []

    def picky(messages):
        calls.append(len(messages))
        if any(m.seq == 2 for m in messages):
            raise ValueError("cannot store seq 2")
        return []

    from telemetry.sinks import SINKS

    batch = [msg("cam-1", "ota/status", schemas.envelope(seq=seq)) for seq in (1, 2, 3)]
    result = ingest_batch(batch, sinks={**SINKS, "ota/status": picky})
    assert result.dead_letters == {"sink_error": 1} and result.accepted == 2
    assert DeadLetter.objects.get().detail == "ValueError: cannot store seq 2"
    assert calls == [3, 1, 1, 1]


def test_nul_character_in_a_string_is_rejected_not_a_database_error():
    body = schemas.telemetry_message(seq=3, records=[record(label="per\x00son")])
    result = ingest_batch([msg("cam-1", "telemetry", body), telemetry("cam-1", 4)])
    assert result.dead_letters == {"field_value": 1}
    assert InferenceRecord.objects.count() == 1


def test_heartbeat_is_stored_once():
    beat = heartbeat("cam-1", 4)
    ingest_batch([beat, beat])
    row = Heartbeat.objects.get()
    assert (row.cpu_pct, row.temp_c, row.buffer_depth) == (12.0, 51.5, 3)
    assert row.models_running == [{"name": "yolo-n", "version": "1.2.0", "slot": "a"}]


def test_status_sets_presence_and_an_old_offline_redelivered_later_does_not_flip_it():
    make_device("cam-pres")
    ingest_batch([status("cam-pres", 10, "offline")])
    ingest_batch([status("cam-pres", 12, "online")])
    assert Device.objects.get(pk="cam-pres").online is True
    ingest_batch([status("cam-pres", 10, "offline")])  # redelivered old message
    assert Device.objects.get(pk="cam-pres").online is True


def test_last_will_with_seq_reserved_before_online_takes_the_device_offline():
    make_device("cam-will")
    ingest_batch([status("cam-will", 5, "online")])
    # Reconnect: will reserved as seq 20, then online as seq 21; the connection dies, the will arrives.
    ingest_batch([status("cam-will", 21, "online")])
    ingest_batch([status("cam-will", 20, "offline")])
    assert Device.objects.get(pk="cam-will").online is False
    ingest_batch([status("cam-will", 21, "online")])  # a redelivered copy of the online stays stale
    assert Device.objects.get(pk="cam-will").online is False
    assert DevicePresence.objects.get(device_id="cam-will").status_seq == 21
    ingest_batch([status("cam-will", 23, "online")])  # the next connection
    assert Device.objects.get(pk="cam-will").online is True


def test_last_seen_only_moves_forward():
    make_device("cam-seen")
    later = timezone.now() + dt.timedelta(minutes=5)
    services.devices_mark_seen(device_ids={"cam-seen"}, at=later)
    services.devices_mark_seen(device_ids={"cam-seen"}, at=later - dt.timedelta(minutes=1))
    assert Device.objects.get(pk="cam-seen").last_seen_at == later
    much_later = later + dt.timedelta(minutes=1)
    services.devices_mark_seen(device_ids={"cam-seen"}, at=much_later)
    assert Device.objects.get(pk="cam-seen").last_seen_at == much_later


def test_stored_records_mark_their_minute_for_the_rollup():
    ingest_batch([telemetry("cam-1", 1, n=2)])
    assert RollupDirtyMinute.objects.filter(device_id="cam-1").count() >= 1


def test_records_land_in_a_day_partition():
    ingest_batch([telemetry("cam-1", 1)])
    today = timezone.now().strftime("%Y%m%d")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM telemetry_inferencerecord_p{today}")  # noqa: S608
        assert cursor.fetchone()[0] == 1
