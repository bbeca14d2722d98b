"""Presence history: the status sink records each applied transition once, with its cause; retention
prunes old ones; the API lists a device's newest first."""

import datetime as dt
import json

import pytest
from django.utils import timezone

from devices import services as device_services
from devices.models import Device
from fleet.services import Actor
from fleet_agent import schemas
from telemetry import services
from telemetry.ingest import InboundMessage, ingest_batch
from telemetry.models import DeadLetter, DevicePresence, InferenceRecord, PresenceEvent
from tests.factories import make_device

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def status(device_id: str, seq: int, state: str, *, ts: dt.datetime, received_at: dt.datetime | None = None):
    body = schemas.status_message(seq=seq, state=state, ts_ms=int(ts.timestamp() * 1000))
    return InboundMessage(
        topic=f"devices/{device_id}/status", payload=json.dumps(body).encode(), received_at=received_at or ts
    )


def history(device_id: str) -> list[tuple]:
    return list(PresenceEvent.objects.filter(device_id=device_id).order_by("at").values_list("online", "cause", "seq"))


def test_connect_clean_disconnect_and_lost_connection_are_recorded_with_their_cause():
    make_device("cam-hist")
    ingest_batch([status("cam-hist", 2, "online", ts=T0)])  # will reserved as 1, then online
    ingest_batch([status("cam-hist", 7, "offline", ts=T0 + dt.timedelta(minutes=5))])  # the agent's goodbye
    ingest_batch([status("cam-hist", 9, "online", ts=T0 + dt.timedelta(minutes=10))])  # will reserved as 8
    # The connection dies: the broker publishes the will built at connect time, 20 minutes later.
    lost_at = T0 + dt.timedelta(minutes=30)
    ingest_batch([status("cam-hist", 8, "offline", ts=T0 + dt.timedelta(minutes=10), received_at=lost_at)])
    assert history("cam-hist") == [
        (True, "connect", 2),
        (False, "disconnect", 7),
        (True, "connect", 9),
        (False, "will", 8),
    ]
    will = PresenceEvent.objects.get(device_id="cam-hist", cause="will")
    assert will.at == lost_at  # when the loss was noticed, not the will's stale ts


def test_redelivered_and_stale_status_messages_record_nothing():
    make_device("cam-dup")
    ingest_batch([status("cam-dup", 5, "online", ts=T0)])
    ingest_batch([status("cam-dup", 5, "online", ts=T0)])  # redelivery
    ingest_batch([status("cam-dup", 4, "offline", ts=T0, received_at=T0 + dt.timedelta(minutes=1))])  # the will
    ingest_batch([status("cam-dup", 4, "offline", ts=T0, received_at=T0 + dt.timedelta(minutes=2))])  # again
    ingest_batch([status("cam-dup", 5, "online", ts=T0)])  # a late copy of the online stays stale
    ingest_batch([status("cam-dup", 3, "offline", ts=T0 - dt.timedelta(minutes=1))])  # older still
    assert history("cam-dup") == [(True, "connect", 5), (False, "will", 4)]


def test_retention_prunes_presence_history_past_its_days(settings):
    settings.TELEMETRY_PRESENCE_RETENTION_DAYS = 30
    now = timezone.now()
    make_device("cam-old")
    ingest_batch([status("cam-old", 1, "online", ts=now - dt.timedelta(days=40))])
    ingest_batch([status("cam-old", 2, "offline", ts=now - dt.timedelta(days=2))])
    done = services.retention_apply(now=now)
    assert done["presence_events_deleted"] == 1
    assert history("cam-old") == [(False, "disconnect", 2)]


def test_viewer_reads_a_devices_presence_history_newest_first(viewer_api):
    make_device("cam-api")
    for seq, state in ((1, "online"), (2, "offline"), (3, "online")):
        ingest_batch([status("cam-api", seq, state, ts=T0 + dt.timedelta(minutes=seq))])
    response = viewer_api.get("/api/v1/devices/cam-api/presence/?limit=2")
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [(r["seq"], r["online"], r["cause"]) for r in rows] == [(3, True, "connect"), (2, False, "disconnect")]
    assert rows[0]["at"] == "2026-03-01T08:03:00Z"


def test_presence_history_of_unknown_device_is_404_and_bad_limit_is_400(viewer_api):
    missing = viewer_api.get("/api/v1/devices/nope-device/presence/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "device_not_found"
    make_device("cam-lim")
    bad = viewer_api.get("/api/v1/devices/cam-lim/presence/?limit=0")
    assert bad.status_code == 400
    assert "limit" in bad.json()["error"]["fields"]


def revoke(device_id: str) -> None:
    device_services.device_revoke(actor=Actor.system("tests"), device=Device.objects.get(pk=device_id), reason="stolen")


def telemetry(device_id: str, seq: int) -> InboundMessage:
    rec = schemas.inference_record(task="detect", model="m", model_version="1.0.0", latency_ms=5.0, confidence=0.9)
    body = schemas.telemetry_message(seq=seq, records=[rec])
    return InboundMessage(
        topic=f"devices/{device_id}/telemetry", payload=json.dumps(body).encode(), received_at=timezone.now()
    )


def test_revoking_an_online_device_takes_it_offline_with_a_revoked_entry():
    make_device("cam-rev")
    ingest_batch([status("cam-rev", 2, "online", ts=T0)])
    revoke("cam-rev")
    assert history("cam-rev") == [(True, "connect", 2), (False, "revoked", 2)]
    assert DevicePresence.objects.get(pk="cam-rev").online is False
    assert Device.objects.get(pk="cam-rev").online is False
    revoke("cam-rev")  # already revoked: nothing more
    assert len(history("cam-rev")) == 2


def test_revoking_an_offline_device_records_nothing():
    make_device("cam-rev-off")
    ingest_batch([status("cam-rev-off", 2, "online", ts=T0)])
    ingest_batch([status("cam-rev-off", 3, "offline", ts=T0 + dt.timedelta(minutes=1))])
    revoke("cam-rev-off")
    make_device("cam-never")
    revoke("cam-never")  # never sent a status
    assert history("cam-rev-off") == [(True, "connect", 2), (False, "disconnect", 3)]
    assert history("cam-never") == []


def test_nothing_a_revoked_device_still_sends_is_stored_and_its_batch_neighbours_are():
    make_device("cam-gone")
    make_device("cam-kept")
    ingest_batch([status("cam-gone", 2, "online", ts=T0)])
    revoke("cam-gone")
    result = ingest_batch(
        [
            telemetry("cam-gone", 3),
            status("cam-gone", 4, "online", ts=T0 + dt.timedelta(minutes=1)),  # would flip it back online
            telemetry("cam-kept", 1),
        ]
    )
    assert result.accepted == 1
    assert result.dead_letters == {"device_revoked": 2}
    assert result.devices_seen == {"cam-kept"}
    assert InferenceRecord.objects.filter(device_id="cam-gone").count() == 0
    assert InferenceRecord.objects.filter(device_id="cam-kept").count() == 1
    letters = DeadLetter.objects.filter(device_id="cam-gone").order_by("topic")
    assert [(d.topic, d.reason) for d in letters] == [
        ("devices/cam-gone/status", "device_revoked"),
        ("devices/cam-gone/telemetry", "device_revoked"),
    ]
    assert DevicePresence.objects.get(pk="cam-gone").online is False
    assert history("cam-gone") == [(True, "connect", 2), (False, "revoked", 2)]
