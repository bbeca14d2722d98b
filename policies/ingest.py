"""Sink of ``devices/{id}/llm/usage`` (telemetry/ingest_contract.py): the device's own decisions.

Body: ``{"v": 1, "seq", "ts", "task", "data_class", "route": "local"|"cloud"|"deny", "reason",
"model"?, "tokens_in"?, "tokens_out"?, "cost"?}``. Stored as device-reported ledger rows, idempotent on
(device, seq). They show what stayed on the device and why; they never count against budgets (the gateway's
own rows are the authoritative cloud usage).
"""

import math

from devices.models import Device
from fleet_agent.policy.decide import GATEWAY_REASONS, REASONS
from policies.models import LlmUsage, Source
from telemetry.ingest_contract import DeviceMessage, Rejection

ROUTES = {"local", "cloud", "deny"}
KNOWN_REASONS = frozenset(REASONS + GATEWAY_REASONS)
MAX_TOKENS = 10**9


def _check(body: dict) -> tuple[str, str] | None:
    for field in ("task", "data_class", "reason"):
        value = body.get(field)
        if value is None:
            return "field_missing", field
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            return "field_type", field
    if body.get("route") not in ROUTES:
        return ("field_missing" if "route" not in body else "field_value"), "route"
    if body["reason"] not in KNOWN_REASONS:
        return "field_value", "reason"
    if not isinstance(body.get("model", ""), str) or len(body.get("model", "")) > 128:
        return "field_type", "model"
    for field in ("tokens_in", "tokens_out"):
        value = body.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
            return "field_type", field
    cost = body.get("cost", 0)
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost < 0:
        return "field_type", "cost"
    return None


def store_llm_usage(messages: list[DeviceMessage]) -> list[Rejection]:
    rejections = []
    known = set(Device.objects.filter(pk__in={m.device_id for m in messages}).values_list("pk", flat=True))
    group_of = dict(Device.objects.filter(pk__in=known, group__isnull=False).values_list("pk", "group__name"))
    rows = []
    for message in messages:
        if message.device_id not in known:
            rejections.append(Rejection(message, "unknown_device", message.device_id))
            continue
        problem = _check(message.body)
        if problem is not None:
            rejections.append(Rejection(message, problem[0], problem[1]))
            continue
        body = message.body
        rows.append(
            LlmUsage(
                device_id=message.device_id,
                group_name=group_of.get(message.device_id, ""),
                source=Source.DEVICE,
                seq=message.seq,
                at=message.ts,
                task=body["task"],
                data_class=body["data_class"],
                route=body["route"],
                reason=body["reason"],
                model=body.get("model", ""),
                tokens_in=body.get("tokens_in", 0),
                tokens_out=body.get("tokens_out", 0),
                cost_micros=math.ceil(body.get("cost", 0) * 1_000_000),
            )
        )
    # ON CONFLICT DO NOTHING on (device, seq): a redelivered report is stored once.
    LlmUsage.objects.bulk_create(rows, ignore_conflicts=True)
    return rejections
