"""The llm/usage sink, called directly as the ingest worker does."""

import datetime as dt
import json

import pytest

from policies.ingest import store_llm_usage
from policies.models import BudgetCounter, LlmUsage
from telemetry.ingest_contract import DeviceMessage
from tests.factories import make_device

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


def message(device_id, seq, **body):
    full = {
        "v": 1,
        "seq": seq,
        "ts": NOW.isoformat(),
        "task": "summarize",
        "data_class": "personal",
        "route": "local",
        "reason": "egress_never",
    } | body
    full = {k: v for k, v in full.items() if v is not None}
    return DeviceMessage(
        device_id=device_id,
        leaf="llm/usage",
        seq=seq,
        ts=NOW,
        body=full,
        raw=json.dumps(full).encode(),
        received_at=NOW,
    )


def test_reports_are_stored_once_per_seq():
    result, _ = make_device("cam-ingest-1")
    batch = [
        message("cam-ingest-1", 1),
        message(
            "cam-ingest-1",
            2,
            route="cloud",
            reason="cloud_allowed",
            model="small",
            tokens_in=30,
            tokens_out=12,
            cost=0.0004,
        ),
        message("cam-ingest-1", 3, route="deny", reason="rate_limited"),  # a gateway answer, reported
    ]
    assert store_llm_usage(batch) == []
    assert store_llm_usage(batch) == []  # redelivered
    rows = list(LlmUsage.objects.filter(device=result.device).order_by("seq"))
    assert [(r.seq, r.source, r.route, r.reason) for r in rows] == [
        (1, "device", "local", "egress_never"),
        (2, "device", "cloud", "cloud_allowed"),
        (3, "device", "deny", "rate_limited"),
    ]
    assert (rows[1].tokens_in, rows[1].tokens_out, rows[1].cost_micros) == (30, 12, 400)
    assert not BudgetCounter.objects.exists()  # device reports never count against budgets


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"task": None}, "field_missing"),
        ({"route": "moon"}, "field_value"),
        ({"reason": "because"}, "field_value"),
        ({"tokens_in": -1}, "field_type"),
        ({"tokens_out": "ten"}, "field_type"),
        ({"cost": float("inf")}, "field_type"),
        ({"data_class": 7}, "field_type"),
    ],
)
def test_invalid_reports_are_rejected_with_a_reason(change, reason):
    make_device("cam-ingest-2")
    good = message("cam-ingest-2", 1)
    bad = message("cam-ingest-2", 2, **change)
    rejections = store_llm_usage([good, bad])
    assert [(r.message.seq, r.reason) for r in rejections] == [(2, reason)]
    assert list(LlmUsage.objects.values_list("seq", flat=True)) == [1]


def test_reports_of_unknown_devices_are_rejected():
    [rejection] = store_llm_usage([message("ghost-device", 1)])
    assert rejection.reason == "unknown_device"
    assert not LlmUsage.objects.exists()
