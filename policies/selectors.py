"""Reads shared by the gateway, the API and the publisher: scope documents, effective policies, usage."""

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass

from django.db import InterfaceError, OperationalError, connection
from django.db.models import Case, Count, Q, Sum, When

from devices.models import Device, DeviceStatus
from fleet_agent.policy import CompiledPolicy, EffectivePolicy, compile_policy, merge_policies
from fleet_agent.policy.decide import window_starts
from policies.models import BudgetCounter, LlmUsage, Policy, Scope
from policies.statements import hot_cursor

FLEET_LABEL = "fleet"

# Merge order of the scopes: each overrides the one before it.
_SCOPE_ORDER = {Scope.FLEET: 0, Scope.GROUP: 1, Scope.DEVICE: 2}


def scope_policies(device: Device) -> list[Policy]:
    """The policies that apply to a device, fleet first, in one query."""
    condition = Q(scope=Scope.FLEET) | Q(device_id=device.pk)
    if device.group_id:
        condition |= Q(group_id=device.group_id)
    rows = list(Policy.objects.filter(condition).select_related("group"))
    return sorted(rows, key=lambda row: _SCOPE_ORDER[row.scope])


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


@dataclass(frozen=True)
class GatewayCaller:
    """A device calling the gateway, and the key of its compiled policy: the (id, version) of its scope
    rows, fleet first."""

    device: Device
    policy_key: tuple[tuple[int, int], ...]


def _caller_sql() -> str:
    devices = connection.ops.quote_name(Device._meta.db_table)
    policies = connection.ops.quote_name(Policy._meta.db_table)
    # A LEFT JOIN so a device without any policy still comes back (as one row with NULL policy columns).
    return (
        f"SELECT d.id, d.status, d.group_id, p.scope, p.id, p.version FROM {devices} d "  # noqa: S608
        f"LEFT JOIN {policies} p ON p.scope = 'fleet' OR p.device_id = d.id OR p.group_id = d.group_id "
        "WHERE d.token_hash = %s"
    )


def _caller_rows(token_hash: str) -> list[tuple]:
    with hot_cursor() as cursor:
        cursor.execute(_caller_sql(), [token_hash])
        return cursor.fetchall()


def gateway_caller(token_hash: str) -> GatewayCaller | None:
    """The device with this token hash and its policy key, in one query (authentication and the policy
    lookup are two of the gateway's round trips otherwise). Raw SQL: building this through the ORM cost
    more CPU than the gateway's whole budget for it. The device comes back with only id, status and group
    set, which is all the gateway and its services read."""
    # Django's CONN_HEALTH_CHECKS would spend a round trip (SELECT 1) on the first query of every request
    # that reuses a persistent connection. This lookup is the gateway's first query and a read, safe to
    # repeat, so it is the check: on a reused connection found dead (PostgreSQL restarted, or the
    # connection was cut), close it and read again on a new one.
    reused = connection.connection is not None and not connection.in_atomic_block
    if reused:
        connection.health_check_done = True
    try:
        rows = _caller_rows(token_hash)
    except (OperationalError, InterfaceError):
        if not reused:
            raise
        connection.close()
        rows = _caller_rows(token_hash)
    if not rows:
        return None
    device_id, status, group_id = rows[0][:3]
    device = Device(id=device_id, status=status, group_id=group_id)
    device._state.adding = False  # a row read from the database, not one to insert
    found = sorted((_SCOPE_ORDER[scope], pk, version) for _, _, _, scope, pk, version in rows if pk is not None)
    return GatewayCaller(device=device, policy_key=tuple((pk, version) for _, pk, version in found))


# Compiled policies keyed by the (id, version) of the rows they come from: every change to a scope's
# policy bumps its version (or adds or removes a row), so a change makes a new key and the next request in
# every process misses and merges the new documents. Nothing to invalidate across processes, and a stale
# policy is never served.
_compiled: OrderedDict[tuple, tuple[CompiledPolicy, dict]] = OrderedDict()
_COMPILED_MAX = 4096


def compiled_policy(caller: GatewayCaller) -> tuple[CompiledPolicy, dict]:
    """(compiled policy, effective document) of a gateway caller; the documents are only read and merged
    when this process has not seen the caller's policy key yet."""
    hit = _compiled.get(caller.policy_key)
    if hit is None:
        rows = scope_policies(caller.device)
        document = merge_policies(_scopes(rows)).document
        hit = (compile_policy(document), document)
        # Stored under the key of the rows actually read: if a policy changed since the caller's key was
        # read, the newer documents are used now and cached under their own key.
        _compiled[tuple((row.pk, row.version) for row in rows)] = hit
        while len(_compiled) > _COMPILED_MAX:
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


BUDGET_FIELDS = {"tokens": "tokens", "cost": "cost_micros", "requests": "requests"}  # field: counter column
BUDGET_WINDOWS = ("hour", "day", "month")
_COUNTER_SCALE = {"cost": 1_000_000}  # counters keep cost in millionths of LLM_CURRENCY


def budget_usage(*, at: dt.datetime, active_by_group: dict[int | None, int], max_scopes: int = 20) -> list[dict]:
    """Cloud usage against budgets, per scope policy that sets budgets (fleet default, groups, then
    devices, at most ``max_scopes``), per window (current hour, day, month) and per budgeted field.

    A budget limits each device of its scope (the gateway reserves against each device's own counter),
    so a scope's budget is its per-device limit times its active devices, its usage the sum of its
    devices' counters in the current window (settled and reserved), and ``at_limit`` how many of its
    devices have used their whole limit.

    Per window (index budget_counter_window_idx, that window's counters only): one aggregate for the
    fleet without a join, one for the scoped groups (joining only their devices), one for the scoped
    devices, each with one conditional count per distinct limit. Queries do not grow with the number of
    scopes. ``active_by_group``: active devices per group id (None: in no group), which the dashboard
    already counts in its one pass over the devices (fleet.views.fleet_counts).
    """
    starts = window_starts(at)
    rank = Case(*(When(scope=scope, then=order) for scope, order in _SCOPE_ORDER.items()))
    policies = list(
        Policy.objects.filter(document__has_key="budgets")
        .select_related("group")
        .annotate(rank=rank)
        .order_by("rank", "id")[:max_scopes]
    )
    if not policies:
        return []
    limits = {p.pk: {w: (p.document.get("budgets") or {}).get(w) or {} for w in BUDGET_WINDOWS} for p in policies}
    device_ids = [p.device_id for p in policies if p.scope == Scope.DEVICE]
    group_ids = [p.group_id for p in policies if p.scope == Scope.GROUP]
    devices_in: dict = {None: sum(active_by_group.values())} | {g: active_by_group.get(g, 0) for g in group_ids}
    active_devices = Device.objects.filter(status=DeviceStatus.ACTIVE, pk__in=device_ids).values_list("pk", flat=True)
    devices_in |= {("device", d): 1 for d in active_devices}

    totals: dict[str, dict] = {}  # window -> {None (fleet), group id or ("device", id): {aggregate: value}}
    for window in BUDGET_WINDOWS:
        budgeted = [(p, limits[p.pk][window]) for p in policies if limits[p.pk][window]]
        if not budgeted:
            continue
        thresholds: dict[tuple, str] = {}  # (field, limit) -> the alias of its conditional count
        aggregates = {f"{field}_used": Sum(column) for field, column in BUDGET_FIELDS.items()}
        for _policy, window_limits in budgeted:
            for field, limit in window_limits.items():
                if field in BUDGET_FIELDS and (field, limit) not in thresholds:
                    thresholds[(field, limit)] = f"at_limit_{len(thresholds)}"
                    aggregates[thresholds[(field, limit)]] = Count(
                        "id", filter=Q(**{f"{BUDGET_FIELDS[field]}__gte": limit * _COUNTER_SCALE.get(field, 1)})
                    )
        counters = BudgetCounter.objects.filter(window=window, window_start=starts[window])
        by_key = {}
        if any(p.scope == Scope.FLEET for p, _ in budgeted):
            # Without a join: the fleet's row sums this window's counters from the index alone.
            by_key[None] = counters.aggregate(**aggregates)
        scoped_groups = [p.group_id for p, _ in budgeted if p.scope == Scope.GROUP]
        if scoped_groups:
            # Only the scoped groups' devices are joined (from the (group, id) index), not the whole fleet.
            grouped = counters.filter(device__group_id__in=scoped_groups).order_by().values("device__group_id")
            for row in grouped.annotate(**aggregates):
                by_key[row.pop("device__group_id")] = row
        if device_ids:
            for row in counters.filter(device_id__in=device_ids).order_by().values("device_id").annotate(**aggregates):
                by_key[("device", row.pop("device_id"))] = row
        totals[window] = {"rows": by_key, "thresholds": thresholds}

    out = []
    for policy in policies:
        soft = float(policy.document.get("budget_soft_threshold", 0.8))
        key = {Scope.FLEET: None, Scope.GROUP: policy.group_id}.get(policy.scope, ("device", policy.device_id))
        device_count = devices_in.get(key, 0)
        for window in BUDGET_WINDOWS:
            window_limits = {f: v for f, v in limits[policy.pk][window].items() if f in BUDGET_FIELDS}
            if not window_limits or window not in totals:
                continue
            row, thresholds = totals[window]["rows"].get(key), totals[window]["thresholds"]
            fields = []
            for field, limit in window_limits.items():
                scale = _COUNTER_SCALE.get(field, 1)
                used = ((row[f"{field}_used"] or 0) if row else 0) / scale
                at_limit = row[thresholds[(field, limit)]] if row else 0
                budget = limit * device_count
                share = used / budget if budget else (1.0 if used else 0.0)
                fields.append(
                    {
                        "field": field,
                        "used": used,
                        "limit_per_device": limit,
                        "budget": budget,
                        "percent": round(100 * share, 1),
                        "bar_percent": round(min(100.0, 100 * share), 1),
                        "level": "over" if share >= 1 else "warn" if share >= soft else "ok",
                        "at_limit": at_limit,
                    }
                )
            out.append(
                {
                    "scope": policy.label,
                    "window": window,
                    "window_start": starts[window],
                    "devices": device_count,
                    "fields": fields,
                }
            )
    return out
