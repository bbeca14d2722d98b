"""Every state change of the policies app: scope policies (with audit events and republishing), and the
gateway's budget reservations and usage ledger."""

import datetime as dt
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import F, Q
from rest_framework.exceptions import ErrorDetail, ValidationError

from devices.models import Device, DeviceGroup, DeviceStatus
from fleet.errors import ApiError
from fleet.services import Actor, audit_record
from fleet_agent.policy import validate_document
from fleet_agent.policy.decide import window_starts
from policies.models import BudgetCounter, LlmUsage, Policy, Scope, Source

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
    policy = Policy.objects.create(scope=scope, group=group, device=device, document=document, updated_by=actor.user)
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


def _reserve_window(
    device_id: str, window: str, start: dt.datetime, limits: dict, tokens: int, cost_micros: int
) -> bool:
    """Add one request's reservation to a window counter, only if it stays within every limit.

    The race: many gateway requests of one device at once. INSERT ... ON CONFLICT DO UPDATE ... WHERE
    locks the counter row and re-checks the limits on the newest row version (PostgreSQL re-evaluates
    the WHERE after waiting for a concurrent updater), so the sum of reservations never passes a limit.
    """
    if (
        tokens > limits.get("tokens", tokens)
        or cost_micros > limits.get("cost", float("inf")) * 1_000_000
        or limits.get("requests", 1) < 1
    ):
        return False
    checks, params = [], [device_id, window, start, tokens, cost_micros]
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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


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


@transaction.atomic
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
    this only ever gives budget back)."""
    _adjust_counters(
        reservation,
        tokens=tokens_in + tokens_out - reservation.tokens,
        cost_micros=cost_micros - reservation.cost_micros,
        requests=0,
    )
    LlmUsage.objects.filter(pk=reservation.usage_id).update(
        state="settled",
        reason=reason,
        upstream=upstream,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_micros=cost_micros,
    )


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
