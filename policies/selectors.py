"""Reads shared by the gateway, the API and the publisher: scope documents, effective policies, usage."""

import datetime as dt
from collections import OrderedDict

from django.db.models import Case, Count, Q, Sum, When

from devices.models import Device, DeviceStatus
from fleet_agent.policy import CompiledPolicy, EffectivePolicy, compile_policy, merge_policies
from fleet_agent.policy.decide import window_starts
from policies.models import BudgetCounter, LlmUsage, Policy, Scope

FLEET_LABEL = "fleet"


def scope_policies(device: Device) -> list[Policy]:
    """The policies that apply to a device, fleet first, in one query."""
    condition = Q(scope=Scope.FLEET) | Q(device_id=device.pk)
    if device.group_id:
        condition |= Q(group_id=device.group_id)
    rows = list(Policy.objects.filter(condition).select_related("group"))
    order = {Scope.FLEET: 0, Scope.GROUP: 1, Scope.DEVICE: 2}
    return sorted(rows, key=lambda row: order[row.scope])


def _scopes(rows: list[Policy]) -> list[tuple[str, dict]]:
    scopes = [(row.label, row.document) for row in rows]
    if not rows or rows[0].scope != Scope.FLEET:
        # No fleet policy yet: the top scope is empty, so nothing is allowed (no rule means deny).
        scopes.insert(0, (FLEET_LABEL, {}))
    return scopes


def effective_policy(device: Device) -> EffectivePolicy:
    return merge_policies(_scopes(scope_policies(device)))


def effective_policies(devices: list[Device]) -> dict[str, EffectivePolicy]:
    """Effective policies of many devices with three queries in all (the publisher's batch path)."""
    fleet = Policy.objects.filter(scope=Scope.FLEET).first()
    group_ids = {d.group_id for d in devices if d.group_id}
    groups = {p.group_id: p for p in Policy.objects.filter(group_id__in=group_ids).select_related("group")}
    own = {p.device_id: p for p in Policy.objects.filter(device_id__in=[d.pk for d in devices])}
    out = {}
    for device in devices:
        rows = [r for r in (fleet, groups.get(device.group_id), own.get(device.pk)) if r is not None]
        out[device.pk] = merge_policies(_scopes(rows))
    return out


# Compiled policies keyed by the (id, version) of the rows they come from: a change to any scope makes a
# new key, so the cache never serves a stale policy and needs no invalidation across processes.
_compiled: OrderedDict[tuple, tuple[CompiledPolicy, dict]] = OrderedDict()
_COMPILED_MAX = 4096


def compiled_policy(device: Device) -> tuple[CompiledPolicy, dict]:
    """(compiled policy, effective document) of a device, for the gateway: one light query for the
    (id, version) of its scope rows; the documents are only read and merged on a cache miss."""
    condition = Q(scope=Scope.FLEET) | Q(device_id=device.pk)
    if device.group_id:
        condition |= Q(group_id=device.group_id)
    order = {Scope.FLEET: 0, Scope.GROUP: 1, Scope.DEVICE: 2}
    key = tuple(
        (pk, version)
        for _, pk, version in sorted(
            (order[scope], pk, version)
            for scope, pk, version in Policy.objects.filter(condition).values_list("scope", "pk", "version")
        )
    )
    hit = _compiled.get(key)
    if hit is None:
        document = effective_policy(device).document
        hit = (compile_policy(document), document)
        _compiled[key] = hit
        if len(_compiled) > _COMPILED_MAX:
            _compiled.popitem(last=False)
    return hit


def budget_status(device: Device, document: dict, at: dt.datetime) -> dict:
    """Per budget window: the limits, what is used (settled + in-flight reservations) and what is left."""
    starts = window_starts(at)
    windows = dict(document.get("budgets", {}))
    rpm = document.get("rate_limit", {}).get("requests_per_minute")
    if rpm is not None:
        windows["minute"] = {"requests": rpm}
    counters = {
        c.window: c
        for c in BudgetCounter.objects.filter(
            device=device, window__in=list(windows), window_start__in=[starts[w] for w in windows]
        )
        if c.window_start == starts[c.window]
    }
    out = {}
    for window, limits in windows.items():
        counter = counters.get(window)
        used = {
            "tokens": counter.tokens if counter else 0,
            "cost": (counter.cost_micros if counter else 0) / 1_000_000,
            "requests": counter.requests if counter else 0,
        }
        out[window] = {
            "window_start": starts[window].isoformat(),
            "limits": limits,
            "used": used,
            "left": {k: max(limits[k] - used[k], 0) for k in limits},
        }
    return out


def usage_summary(*, since: dt.datetime, device: Device | None = None, group_name: str | None = None) -> dict:
    """Tokens, cost and requests by source, route, model and reason since a time (ledger rows)."""
    rows = LlmUsage.objects.filter(at__gte=since)
    if device is not None:
        rows = rows.filter(device=device)
    if group_name is not None:
        rows = rows.filter(group_name=group_name)
    totals = Sum("tokens_in"), Sum("tokens_out"), Sum("cost_micros"), Count("id")

    def grouped(queryset, *fields):
        out = []
        for row in (
            queryset.values(*fields).annotate(ti=totals[0], to=totals[1], c=totals[2], n=totals[3]).order_by(*fields)
        ):
            out.append(
                {f: row[f] for f in fields}
                | {"tokens_in": row["ti"], "tokens_out": row["to"], "cost": row["c"] / 1_000_000, "requests": row["n"]}
            )
        return out

    return {
        "since": since.isoformat(),
        "cloud_by_model": grouped(rows.filter(route="cloud"), "source", "model"),
        "decisions_by_reason": grouped(rows, "source", "route", "reason"),
    }


BUDGET_FIELDS = (("tokens", "tokens"), ("cost", "cost_micros"), ("requests", "requests"))
BUDGET_WINDOWS = ("hour", "day", "month")


def budget_usage(*, at: dt.datetime, max_scopes: int = 20) -> list[dict]:
    """Cloud usage against budgets, per scope policy that sets budgets (fleet default, groups, then
    devices, at most ``max_scopes``), per window (current hour, day, month) and per budgeted field.

    A budget limits each device of its scope (the gateway reserves against each device's own counter),
    so a scope's budget is its per-device limit times its active devices, its usage the sum of its
    devices' counters in the current window (settled and reserved), and ``at_limit`` how many of its
    devices have used their whole limit. One aggregate query per scope and window, on the counters of
    the current window only (index budget_counter_window_idx).
    """
    starts = window_starts(at)
    rank = Case(When(scope=Scope.FLEET, then=0), When(scope=Scope.GROUP, then=1), default=2)
    policies = (
        Policy.objects.filter(document__has_key="budgets")
        .select_related("group")
        .annotate(rank=rank)
        .order_by("rank", "id")[:max_scopes]
    )
    active = Device.objects.filter(status=DeviceStatus.ACTIVE)
    out = []
    for policy in policies:
        budgets = policy.document.get("budgets") or {}
        soft = float(policy.document.get("budget_soft_threshold", 0.8))
        counters = BudgetCounter.objects.all()
        if policy.scope == Scope.GROUP:
            counters, devices = (
                counters.filter(device__group_id=policy.group_id),
                active.filter(group_id=policy.group_id),
            )
        elif policy.scope == Scope.DEVICE:
            counters, devices = counters.filter(device_id=policy.device_id), active.filter(pk=policy.device_id)
        else:
            devices = active
        device_count = devices.count()
        for window in BUDGET_WINDOWS:
            limits = budgets.get(window) or {}
            fields = [(name, column) for name, column in BUDGET_FIELDS if name in limits]
            if not fields:
                continue
            scale = {"cost": 1_000_000}  # counters keep cost in millionths of LLM_CURRENCY
            aggregates = {}
            for name, column in fields:
                aggregates[f"{name}_used"] = Sum(column)
                limit_in_counter_units = limits[name] * scale.get(name, 1)
                aggregates[f"{name}_at_limit"] = Count("id", filter=Q(**{f"{column}__gte": limit_in_counter_units}))
            totals = counters.filter(window=window, window_start=starts[window]).aggregate(**aggregates)
            rows = []
            for name, _column in fields:
                used = (totals[f"{name}_used"] or 0) / scale.get(name, 1)
                budget = limits[name] * device_count
                share = used / budget if budget else (1.0 if used else 0.0)
                rows.append(
                    {
                        "field": name,
                        "used": used,
                        "limit_per_device": limits[name],
                        "budget": budget,
                        "percent": round(100 * share, 1),
                        "bar_percent": round(min(100.0, 100 * share), 1),
                        "level": "over" if share >= 1 else "warn" if share >= soft else "ok",
                        "at_limit": totals[f"{name}_at_limit"],
                    }
                )
            out.append(
                {
                    "scope": policy.label,
                    "window": window,
                    "window_start": starts[window],
                    "devices": device_count,
                    "fields": rows,
                }
            )
    return out
