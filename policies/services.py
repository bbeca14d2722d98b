"""Every state change of the policies app: scope policies (with audit events and republishing), and the
gateway's budget reservations and usage ledger."""

import datetime as dt
import json
from contextlib import nullcontext
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from rest_framework.exceptions import ErrorDetail, ValidationError

from devices.models import Device, DeviceGroup, DeviceStatus
from fleet.errors import ApiError
from fleet.services import Actor, audit_record
from fleet_agent.policy import validate_document
from fleet_agent.policy.decide import window_starts
from policies.models import BudgetCounter, LlmUsage, Policy, Scope, Source
from policies.statements import hot_cursor

# --- scope policies --------------------------------------------------------------------------------


def policy_validate(document) -> None:
    """Raise a 400 naming every invalid field as ``document.<path>``."""
    errors = validate_document(document)
    if errors:
        fields: dict[str, list] = {}
        for error in errors:
            key = f"document.{error.path}" if error.path else "document"
            fields.setdefault(key, []).append(ErrorDetail(error.message, code=error.code))
        raise ValidationError(fields)


def _enqueue_republish(policy: Policy) -> None:
    from policies import tasks  # tasks import services: import here to keep the module graph acyclic

    scope, group_id, device_id = policy.scope, policy.group_id, policy.device_id
    transaction.on_commit(
        lambda: tasks.publish_scope_policies.delay(scope=scope, group_id=group_id, device_id=device_id)
    )


@transaction.atomic
def policy_create(
    *,
    actor: Actor,
    scope: str,
    document: dict,
    group: DeviceGroup | None = None,
    device: Device | None = None,
) -> Policy:
    policy_validate(document)
    if scope == Scope.FLEET and (group or device):
        raise ApiError("invalid", "A fleet policy has no group or device.", field="scope")
    if scope == Scope.GROUP and (group is None or device is not None):
        raise ApiError("group_required", "A group policy needs a group (and no device).", field="group")
    if scope == Scope.DEVICE and (device is None or group is not None):
        raise ApiError("device_required", "A device policy needs a device (and no group).", field="device")
    exists = Policy.objects.filter(scope=scope, group=group, device=device).exists()
    if exists:
        raise ApiError("policy_exists", "This scope has a policy already; update it.", status_code=409, field="scope")
    try:
        with transaction.atomic():
            policy = Policy.objects.create(
                scope=scope, group=group, device=device, document=document, updated_by=actor.user
            )
    except IntegrityError as exc:
        # Two operators creating the same scope's policy at once: the unique constraints decide.
        raise ApiError("policy_exists", "This scope has a policy already; update it.", status_code=409) from exc
    audit_record(
        actor=actor,
        action="policy.create",
        object_type="policy",
        object_id=policy.label,
        after={"document": document, "version": policy.version},
    )
    _enqueue_republish(policy)
    return policy


@transaction.atomic
def policy_update(*, actor: Actor, policy: Policy, document: dict) -> Policy:
    policy_validate(document)
    # Two operators saving at once: lock the row so versions are not lost and both changes are audited.
    locked = Policy.objects.select_for_update(of=("self",)).select_related("group").get(pk=policy.pk)
    before = {"document": locked.document, "version": locked.version}
    locked.document = document
    locked.version = F("version") + 1
    locked.updated_by = actor.user
    locked.save(update_fields=["document", "version", "updated_by", "updated_at"])
    locked.refresh_from_db(fields=["version"])
    audit_record(
        actor=actor,
        action="policy.update",
        object_type="policy",
        object_id=locked.label,
        before=before,
        after={"document": document, "version": locked.version},
    )
    _enqueue_republish(locked)
    return locked


@transaction.atomic
def policy_delete(*, actor: Actor, policy: Policy) -> None:
    label = policy.label
    _enqueue_republish(policy)
    before = {"document": policy.document, "version": policy.version}
    policy.delete()
    audit_record(actor=actor, action="policy.delete", object_type="policy", object_id=label, before=before)


def affected_device_ids(*, scope: str, group_id: int | None, device_id: str | None):
    """Ids of the devices whose effective policy a scope's change touches, in id order (an iterator)."""
    devices = Device.objects.exclude(status=DeviceStatus.REVOKED).order_by("pk")
    if scope == Scope.GROUP:
        devices = devices.filter(group_id=group_id)
    elif scope == Scope.DEVICE:
        devices = devices.filter(pk=device_id)
    return devices.values_list("pk", flat=True).iterator(chunk_size=2000)


# --- budgets and the ledger -------------------------------------------------------------------------


class BudgetRefused(Exception):
    def __init__(self, reason: str, window: str):
        super().__init__(f"{reason} ({window})")
        self.reason = reason
        self.window = window


@dataclass(frozen=True)
class Reservation:
    usage_id: int
    device_id: str
    windows: tuple[tuple[str, dt.datetime], ...]
    tokens: int
    cost_micros: int


def budget_limits(document: dict) -> dict[str, dict]:
    """The counted windows of an effective policy: its budgets, plus ``minute`` for the rate limit."""
    limits = {w: dict(v) for w, v in document.get("budgets", {}).items()}
    rpm = document.get("rate_limit", {}).get("requests_per_minute")
    if rpm is not None:
        limits["minute"] = {"requests": rpm}
    return limits


_COUNTER_TABLE = BudgetCounter._meta.db_table
_USAGE_TABLE = LlmUsage._meta.db_table


def _fits_alone(limits: dict, tokens: int, cost_micros: int) -> bool:
    """Whether one request fits an empty window (the upsert's INSERT branch has no WHERE to check it)."""
    return (
        tokens <= limits.get("tokens", tokens)
        and cost_micros <= limits.get("cost", float("inf")) * 1_000_000
        and limits.get("requests", 1) >= 1
    )


def _upsert_sql(
    device_id: str, window: str, start: dt.datetime, limits: dict, tokens: int, cost_micros: int
) -> tuple[str, list]:
    """Add one request's reservation to a window counter, only if it stays within every limit.

    The race: many gateway requests of one device at once. INSERT ... ON CONFLICT DO UPDATE ... WHERE
    locks the counter row and re-checks the limits on the newest row version (PostgreSQL re-evaluates
    the WHERE after waiting for a concurrent updater), so the sum of reservations never passes a limit.
    Returns a row only when the reservation was made.
    """
    # Raw SQL: adapt the datetime as the ORM does, so the ORM's later updates match the same row (SQLite
    # stores datetimes as text in Django's own format).
    checks, params = [], [device_id, window, connection.ops.adapt_datetimefield_value(start), tokens, cost_micros]
    table = connection.ops.quote_name(_COUNTER_TABLE)
    if "tokens" in limits:
        checks.append(f"{table}.tokens + EXCLUDED.tokens <= %s")
        params.append(int(limits["tokens"]))
    if "cost" in limits:
        checks.append(f"{table}.cost_micros + EXCLUDED.cost_micros <= %s")
        params.append(int(limits["cost"] * 1_000_000))
    if "requests" in limits:
        checks.append(f"{table}.requests + 1 <= %s")
        params.append(int(limits["requests"]))
    where = f"WHERE {' AND '.join(checks)}" if checks else ""
    # Only constant SQL fragments are joined here; every value is a bound parameter.
    sql = (
        f'INSERT INTO {table} (device_id, "window", window_start, tokens, cost_micros, requests) '  # noqa: S608
        "VALUES (%s, %s, %s, %s, %s, 1) "
        f'ON CONFLICT (device_id, "window", window_start) DO UPDATE SET '
        f"tokens = {table}.tokens + EXCLUDED.tokens, cost_micros = {table}.cost_micros + EXCLUDED.cost_micros, "
        f"requests = {table}.requests + 1 {where} RETURNING id"
    )
    return sql, params


def _reserve_window(
    device_id: str, window: str, start: dt.datetime, limits: dict, tokens: int, cost_micros: int
) -> bool:
    if not _fits_alone(limits, tokens, cost_micros):
        return False
    sql, params = _upsert_sql(device_id, window, start, limits, tokens, cost_micros)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


_USAGE_COLUMNS = (
    "device_id, group_name, source, seq, at, task, data_class, route, reason, model, upstream, "
    "tokens_in, tokens_out, cost_micros, state, reserved"
)


def _reserve_in_one_statement(
    device: Device, windows: list[tuple[str, dt.datetime, dict]], ledger: dict, tokens: int, cost_micros: int
) -> tuple[int | None, str | None]:
    """PostgreSQL hot path: every window's upsert and the ledger row in one statement (data-modifying
    CTEs); the ledger row is only inserted if every window took the reservation. Returns (ledger id or
    None, the first window that refused)."""
    ctes, params, flags = [], [], []
    for index, (window, start, limits) in enumerate(windows):
        if not _fits_alone(limits, tokens, cost_micros):
            return None, window
        sql, upsert_params = _upsert_sql(device.pk, window, start, limits, tokens, cost_micros)
        ctes.append(f"w{index} AS ({sql})")
        params += upsert_params
        flags.append(f"EXISTS (SELECT 1 FROM w{index})")  # noqa: S608
    usage = connection.ops.quote_name(_USAGE_TABLE)
    groups = connection.ops.quote_name(DeviceGroup._meta.db_table)
    all_reserved = " AND ".join(flags) or "TRUE"
    ctes.append(
        f"ins AS (INSERT INTO {usage} ({_USAGE_COLUMNS}) SELECT %s, "  # noqa: S608
        f"COALESCE((SELECT name FROM {groups} WHERE id = %s), ''), %s, NULL, %s, %s, %s, 'cloud', 'reserved', %s, "
        f"'', 0, 0, 0, 'reserved', %s::jsonb WHERE {all_reserved} RETURNING id)"
    )
    params += [
        device.pk,
        device.group_id,
        Source.GATEWAY,
        connection.ops.adapt_datetimefield_value(ledger["at"]),
        ledger["task"],
        ledger["data_class"],
        ledger["model"],
        json.dumps({"tokens": tokens, "cost_micros": cost_micros}),
    ]
    select = ", ".join(["(SELECT id FROM ins)", *flags])
    with hot_cursor() as cursor:
        cursor.execute(f"WITH {', '.join(ctes)} SELECT {select}", params)
        row = cursor.fetchone()
    if row[0] is not None:
        return row[0], None
    refused = next(window for (window, _, _), ok in zip(windows, row[1:], strict=True) if not ok)
    return None, refused


def budget_reserve(
    *,
    device: Device,
    document: dict,
    task: str,
    data_class: str,
    model: str,
    tokens: int,
    cost_micros: int,
    at: dt.datetime,
) -> Reservation:
    """Reserve a request's estimated tokens and cost in every window, or raise BudgetRefused.

    All windows or none: one transaction, windows in a fixed order (no deadlock between two requests).
    """
    limits = budget_limits(document)
    starts = window_starts(at)
    windows = [(window, starts[window], limits[window]) for window in sorted(limits)]
    if connection.vendor == "postgresql":
        ledger = {"at": at, "task": task, "data_class": data_class, "model": model}
        # One statement is atomic by itself; with several windows a refusal by a later window must also
        # undo the earlier ones, so it runs in a transaction that the raise rolls back.
        with transaction.atomic() if len(windows) > 1 else nullcontext():
            usage_id, refused = _reserve_in_one_statement(device, windows, ledger, tokens, cost_micros)
            if usage_id is None:
                raise BudgetRefused("rate_limited" if refused == "minute" else "budget_exhausted", refused)
        return Reservation(
            usage_id=usage_id,
            device_id=device.pk,
            windows=tuple((window, start) for window, start, _ in windows),
            tokens=tokens,
            cost_micros=cost_micros,
        )
    reserved = []
    with transaction.atomic():
        for window in sorted(limits):
            if not _reserve_window(device.pk, window, starts[window], limits[window], tokens, cost_micros):
                raise BudgetRefused("rate_limited" if window == "minute" else "budget_exhausted", window)
            reserved.append((window, starts[window]))
        usage = LlmUsage.objects.create(
            device=device,
            group_name=device.group.name if device.group_id else "",
            source=Source.GATEWAY,
            at=at,
            task=task,
            data_class=data_class,
            route="cloud",
            reason="reserved",
            model=model,
            state="reserved",
            reserved={"tokens": tokens, "cost_micros": cost_micros},
        )
    return Reservation(
        usage_id=usage.pk, device_id=device.pk, windows=tuple(reserved), tokens=tokens, cost_micros=cost_micros
    )


def _adjust_counters(reservation: Reservation, *, tokens: int, cost_micros: int, requests: int) -> None:
    """Apply a correction to every window the reservation counted in: one UPDATE (relative, so it
    composes with concurrent reservations without a read)."""
    if not reservation.windows:
        return
    windows = Q()
    for window, start in reservation.windows:
        windows |= Q(window=window, window_start=start)
    BudgetCounter.objects.filter(windows, device_id=reservation.device_id).update(
        tokens=F("tokens") + tokens, cost_micros=F("cost_micros") + cost_micros, requests=F("requests") + requests
    )


def budget_settle(
    *,
    reservation: Reservation,
    reason: str,
    upstream: str,
    tokens_in: int,
    tokens_out: int,
    cost_micros: int,
) -> None:
    """Replace the reservation by what the upstream reported it used (the estimate is an upper bound, so
    this only ever gives budget back). Counters and the ledger row change together, or not at all."""
    tokens_delta = tokens_in + tokens_out - reservation.tokens
    cost_delta = cost_micros - reservation.cost_micros
    if connection.vendor == "postgresql" and reservation.windows:
        _settle_in_one_statement(reservation, reason, upstream, tokens_in, tokens_out, cost_micros)
        return
    with transaction.atomic():
        _adjust_counters(reservation, tokens=tokens_delta, cost_micros=cost_delta, requests=0)
        LlmUsage.objects.filter(pk=reservation.usage_id).update(
            state="settled",
            reason=reason,
            upstream=upstream,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_micros=cost_micros,
        )


def _settle_in_one_statement(reservation, reason, upstream, tokens_in, tokens_out, cost_micros) -> None:
    """The gateway's hot path on PostgreSQL: one statement (a data-modifying CTE) is one implicit
    transaction, instead of BEGIN, two UPDATEs and COMMIT."""
    counters = connection.ops.quote_name(_COUNTER_TABLE)
    usage = connection.ops.quote_name(_USAGE_TABLE)
    windows = " OR ".join(['("window" = %s AND window_start = %s)'] * len(reservation.windows))
    params = [
        tokens_in + tokens_out - reservation.tokens,
        cost_micros - reservation.cost_micros,
        reservation.device_id,
        *[
            value
            for window, start in reservation.windows
            for value in (window, connection.ops.adapt_datetimefield_value(start))
        ],
        reason,
        upstream,
        tokens_in,
        tokens_out,
        cost_micros,
        reservation.usage_id,
    ]
    sql = (
        f"WITH adjusted AS (UPDATE {counters} SET tokens = tokens + %s, cost_micros = cost_micros + %s "  # noqa: S608
        f"WHERE device_id = %s AND ({windows}) RETURNING 1) "
        f"UPDATE {usage} SET state = 'settled', reason = %s, upstream = %s, tokens_in = %s, tokens_out = %s, "
        "cost_micros = %s WHERE id = %s"
    )
    with hot_cursor() as cursor:
        cursor.execute(sql, params)


@transaction.atomic
def budget_release(*, reservation: Reservation, reason: str) -> None:
    """The request never reached a model (every upstream failed): give the whole reservation back."""
    _adjust_counters(reservation, tokens=-reservation.tokens, cost_micros=-reservation.cost_micros, requests=-1)
    LlmUsage.objects.filter(pk=reservation.usage_id).update(state="released", route="deny", reason=reason)


def usage_record_decision(
    *, device: Device, task: str, data_class: str, route: str, reason: str, model: str = "", at: dt.datetime
) -> None:
    """A gateway decision that sent nothing upstream (a denial): recorded so it shows in the counts."""
    LlmUsage.objects.create(
        device=device,
        group_name=device.group.name if device.group_id else "",
        source=Source.GATEWAY,
        at=at,
        task=task[:64],
        data_class=data_class[:64],
        route=route,
        reason=reason,
        model=model[:128],
    )
