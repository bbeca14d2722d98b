"""Console pages backed by telemetry: ingest counters and dead letters, the dashboard's ingest card, and
heartbeats on the device page. Data goes in through the ingest worker's batch function, as from MQTT."""

import datetime as dt
import json

import pytest
from django.test import Client
from django.utils import timezone

from fleet_agent import schemas
from telemetry.ingest import InboundMessage, ingest_batch
from telemetry.models import DeadLetter
from tests.factories import make_device

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def inbound(topic: str, payload: bytes, *, at: dt.datetime | None = None) -> InboundMessage:
    return InboundMessage(topic=topic, payload=payload, received_at=at or timezone.now())


def heartbeat(device_id: str, seq: int, *, cpu: float, ts: dt.datetime) -> InboundMessage:
    body = schemas.heartbeat_message(
        seq=seq,
        cpu_pct=cpu,
        mem_pct=40.0,
        disk_pct=70.0,
        temp_c=51.5,
        models=[{"name": "detector", "version": "1.4.0", "slot": "a"}],
        buffer_depth=seq,
        dropped=0,
        agent_version="0.1.0",
        ts_ms=int(ts.timestamp() * 1000),
    )
    return inbound(f"devices/{device_id}/heartbeat", json.dumps(body).encode())


def test_ingest_page_shows_counters_and_dead_letters_with_their_payload(viewer_client):
    ingest_batch(
        [
            inbound("devices/cam-1/telemetry", b"<script>alert(1)</script>"),
            inbound("devices/cam-1/telemetry", b"{not json"),
            inbound("nowhere", b"{}"),
        ]
    )
    page = viewer_client.get("/telemetry/")
    body = page.content.decode()
    assert page.status_code == 200
    assert 'data-value="3"' in body  # messages_in
    letters = list(DeadLetter.objects.order_by("-pk"))
    assert len(letters) == 3
    for letter in letters:
        assert f'data-letter="{letter.pk}"' in body
    assert "invalid_topic" in body

    only = viewer_client.get("/telemetry/?reason=invalid_topic", **HTMX).content.decode()
    assert "<html" not in only
    assert only.count("data-letter=") == 1

    script = next(letter for letter in letters if bytes(letter.payload).startswith(b"<script>"))
    detail = viewer_client.get(f"/telemetry/dead-letters/{script.pk}/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "<script>alert(1)" not in detail


def test_ingest_counters_poll_returns_the_counters_card_only(viewer_client):
    ingest_batch([inbound("nowhere", b"{}")])
    fragment = viewer_client.get("/telemetry/?part=counters", **HTMX).content.decode()
    assert fragment.lstrip().startswith('<div id="ingest-counters"')
    assert "dead_letters{reason=&quot;invalid_topic&quot;}" in fragment


def test_dashboard_shows_ingest_totals_and_recent_dead_letters(viewer_client):
    ingest_batch([inbound("nowhere", b"{}"), inbound("nowhere/either", b"{}")])
    ingest_batch([inbound("nowhere", b"{}", at=timezone.now() - dt.timedelta(hours=3))])
    body = viewer_client.get("/").content.decode()
    assert 'data-rate-of="messages_in" data-value="3"' in body
    assert 'data-counter="dead_letters">3<' in body
    assert "2 in the last hour" in body


def test_device_page_shows_the_latest_heartbeat_and_its_series(viewer_client):
    make_device("cam-1")
    now = timezone.now()
    ingest_batch([heartbeat("cam-1", n, cpu=10.0 * n, ts=now - dt.timedelta(minutes=10 - n)) for n in range(1, 4)])
    response = viewer_client.get("/devices/cam-1/?window=1h")
    body = response.content.decode()
    latest = response.context["heartbeats"]["latest"]
    assert latest.seq == 3
    assert "detector@1.4.0" in body
    assert 'id="heartbeat-series"' in body
    series = response.context["heartbeats"]["series"]
    assert [v for v in series["cpu"] if v is not None] == [10.0, 20.0, 30.0]
    assert max(v for v in series["buffer_depth"] if v is not None) == 3


def test_telemetry_pages_need_a_login():
    assert Client().get("/telemetry/").status_code == 302
