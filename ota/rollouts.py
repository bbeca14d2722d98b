"""Staged rollouts: every state change of a rollout, and the gate tick that drives running ones.

States: draft -> running <-> paused -> completed | aborted | rolled_back. Every transition and every
gate evaluation writes an audit event (the evaluation's with its metric snapshot and decision).
Services take ``now=`` so tests drive time forward instead of sleeping.
"""

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from fleet.errors import ApiError
from fleet.services import Actor, audit_record
from ota import cohorts, gates, selectors, services
from ota.models import (
    FAILED_STATES,
    IN_FLIGHT_STATES,
    Artifact,
    DirectorState,
    OnFailure,
    Rollout,
    RolloutDevice,
    RolloutState,
    UpdateState,
)

logger = logging.getLogger(__name__)

LIVE_STATES = [RolloutState.RUNNING, RolloutState.PAUSED]
SYSTEM = Actor.system("rollout-gates")


# --- validation and drafts ------------------------------------------------------------------------


def validate_stages(stages: list[dict]) -> list[dict]:
    """Normalise and check stages: cumulative shares increasing in (0, 1], soak >= 0, known gates."""
    if not isinstance(stages, list) or not 1 <= len(stages) <= 20:
        raise ApiError("invalid_stages", "A rollout has 1 to 20 stages.", field="stages")
    out, previous = [], 0.0
    for index, stage in enumerate(stages):
        share = float(stage.get("share", 0))
        if not previous < share <= 1.0:
            raise ApiError(
                "invalid_stages", f"Stage {index}: shares are cumulative, increasing, in (0, 1].", field="stages"
            )
        soak = int(stage.get("soak_seconds", 0))
        if soak < 0:
            raise ApiError("invalid_stages", f"Stage {index}: soak_seconds must be >= 0.", field="stages")
        stage_gates = stage.get("gates") or {}
        for name, config in stage_gates.items():
            if name not in gates.GATE_NAMES:
                raise ApiError("unknown_gate", f"Stage {index}: unknown gate {name!r}.", field="stages")
            if not isinstance(config, dict) or "threshold" not in config:
                raise ApiError("invalid_gate", f"Stage {index}: gate {name} needs a threshold.", field="stages")
        out.append(
            {
                "share": share,
                "soak_seconds": soak,
                "gates": {
                    name: {"threshold": float(c["threshold"]), "min_samples": int(c.get("min_samples", 1))}
                    for name, c in stage_gates.items()
                },
            }
        )
        previous = share
    return out


def rollout_create(
    *,
    actor: Actor,
    name: str,
    artifact: Artifact,
    selector: dict,
    stages: list[dict],
    on_failure: str = OnFailure.PAUSE,
    window_start_hour: int | None = None,
    window_end_hour: int | None = None,
    gate_window_seconds: int = 900,
    device_timeout_seconds: int = 3600,
    max_retries: int = 2,
    retry_backoff_seconds: int = 300,
) -> Rollout:
    if artifact.revoked_at is not None:
        raise ApiError("release_revoked", "This release has been revoked.", status_code=409, field="artifact")
    if (window_start_hour is None) != (window_end_hour is None):
        raise ApiError("invalid_window", "Give both window hours or neither.", field="window_start_hour")
    rollout = Rollout.objects.create(
        name=name,
        artifact=artifact,
        selector={k: sorted(set(selector.get(k) or [])) for k in ("groups", "tags", "hardware_classes")},
        stages=validate_stages(stages),
        on_failure=on_failure,
        window_start_hour=window_start_hour,
        window_end_hour=window_end_hour,
        gate_window_seconds=gate_window_seconds,
        device_timeout_seconds=device_timeout_seconds,
        max_retries=max_retries,
        retry_backoff_seconds=retry_backoff_seconds,
        created_by=actor.user,
    )
    audit_record(
        actor=actor,
        action="rollout.create",
        object_type="rollout",
        object_id=str(rollout.pk),
        after={"name": name, "artifact": str(artifact), "selector": rollout.selector, "stages": rollout.stages},
    )
    return rollout


@dataclass(frozen=True)
class DryRun:
    targeted: int
    busy: int  # matching devices already in another running or paused rollout (left out)
    per_stage: list[int]  # devices each stage adds
    untargeted: int  # beyond the last stage's share


def rollout_dry_run(*, selector: dict, artifact: Artifact, stages: list[dict]) -> DryRun:
    """How many devices each stage would take, without writing anything. Uses the shares on a fresh
    hash, so counts match a real start up to the hash's randomness (exact for 100%)."""
    stages = validate_stages(stages)
    shares = [s["share"] for s in stages]
    devices = selectors.targeted_devices(selector=selector, artifact=artifact)
    total = devices.count()
    busy = devices.filter(pk__in=RolloutDevice.objects.filter(active=True).values("device_id")).count()
    free = total - busy
    limits = cohorts.stage_limits(shares)
    per_stage, previous = [], 0
    for limit in limits:
        per_stage.append(round(free * (limit - previous) / cohorts.BUCKETS))
        previous = limit
    return DryRun(targeted=free, busy=busy, per_stage=per_stage, untargeted=max(free - sum(per_stage), 0))


# --- start and cohort assignment ------------------------------------------------------------------


# Key of the transaction-level advisory lock that every insert of rollout targets takes (see below).
TARGETS_LOCK = 0x0B_7A_46_E7


def _insert_targets(rollout: Rollout, *, join_at_stage: int | None) -> int:
    """Insert a RolloutDevice row for every matching device not yet in this or another live rollout.

    One INSERT ... SELECT computes each device's bucket and stage in PostgreSQL (same hash as
    cohorts.cohort_bucket) and records the release the director names for it now (the rollback
    target). ``join_at_stage``: for devices joining a running rollout, never below the current stage.

    Two starts racing for the same devices: every insert of targets first takes one advisory lock
    (held to the end of its transaction), so the anti-join of the next one, whose snapshot is taken
    after the lock is granted, sees the rows the previous one committed. That makes a plain INSERT
    safe: ON CONFLICT DO NOTHING did the same job, but its speculative insertion into both unique
    indexes took over a third of a million-row insert. The partial unique index stays as the backstop.
    """
    if connection.vendor != "postgresql":
        return _insert_targets_python(rollout, join_at_stage=join_at_stage)
    sql, params = _insert_targets_sql(rollout, join_at_stage=join_at_stage)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TARGETS_LOCK])
        # The anti-join and the join with the director table hash a million rows: give them memory.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, params)
        return cursor.rowcount


def _insert_targets_sql(rollout: Rollout, *, join_at_stage: int | None) -> tuple[str, list]:
    shares = [s["share"] for s in rollout.stages]
    device_sql, device_params = (
        selectors.targeted_devices(selector=rollout.selector, artifact=rollout.artifact)
        .values_list("id")
        .query.sql_with_params()
    )
    stage_sql = cohorts.stage_case_sql(shares, "t.bucket")
    if join_at_stage is not None:
        stage_sql = f"(CASE WHEN {stage_sql} IS NULL THEN NULL ELSE GREATEST({stage_sql}, {int(join_at_stage)}) END)"
    bucket_sql = cohorts.BUCKET_SQL.format(device="d.id")
    # Interpolated: SQL built here from integers and Django's own compiled queryset; values are params.
    # OFFSET 0 keeps the subquery from being flattened into the outer SELECT, so the hash is computed
    # once per device (not once per CASE branch of the stage) without a MATERIALIZED CTE's temp file.
    sql = f"""
        INSERT INTO ota_rolloutdevice (rollout_id, device_id, bucket, stage, active, previous_artifact_id,
                                       state, reason, attempts)
        SELECT %s, t.id, t.bucket, {stage_sql}, true, t.previous, %s, '', 0
        FROM (
            SELECT d.id, {bucket_sql} AS bucket, ds.artifact_id AS previous
            FROM ({device_sql}) AS d(id)
            LEFT JOIN ota_directorstate ds ON ds.device_id = d.id
            -- Live rollouts' rows are all active: this also skips devices already in this rollout.
            WHERE NOT EXISTS (SELECT 1 FROM ota_rolloutdevice x WHERE x.device_id = d.id AND x.active)
            OFFSET 0
        ) AS t
    """  # noqa: S608
    params = [rollout.pk, UpdateState.PENDING, str(rollout.pk), *device_params]
    return sql, params


def _insert_targets_python(rollout: Rollout, *, join_at_stage: int | None) -> int:
    """The same as _insert_targets for databases without sha256() in SQL (the embedded SQLite run)."""
    shares = [s["share"] for s in rollout.stages]
    taken = set(RolloutDevice.objects.filter(Q(active=True) | Q(rollout=rollout)).values_list("device_id", flat=True))
    previous = dict(DirectorState.objects.values_list("device_id", "artifact_id"))
    rows = []
    for device_id in selectors.targeted_devices(selector=rollout.selector, artifact=rollout.artifact).values_list(
        "id", flat=True
    ):
        if device_id in taken:
            continue
        bucket = cohorts.cohort_bucket(rollout.pk, device_id)
        stage = cohorts.stage_of_bucket(bucket, shares)
        if stage is not None and join_at_stage is not None:
            stage = max(stage, join_at_stage)
        rows.append(
            RolloutDevice(
                rollout=rollout,
                device_id=device_id,
                bucket=bucket,
                stage=stage,
                previous_artifact_id=previous.get(device_id),
            )
        )
    RolloutDevice.objects.bulk_create(rows, batch_size=5000, ignore_conflicts=True)
    return len(rows)


def _reached(rollout: Rollout, stage: int) -> Q:
    """The bucket range holding every device of stages <= stage (see cohorts.reached_filter_limit)."""
    return Q(bucket__lt=cohorts.reached_filter_limit([s["share"] for s in rollout.stages], stage))


def _in_window(rollout: Rollout, now: dt.datetime) -> bool:
    if rollout.window_start_hour is None:
        return True
    hour, start, end = now.hour, rollout.window_start_hour, rollout.window_end_hour
    return start <= hour < end if start <= end else (hour >= start or hour < end)


def _assign(rollout: Rollout, rows_filter: Q, *, now: dt.datetime, retry: bool = False) -> int:
    """Move the matching devices to assigned, point their director at the release, notify them."""
    deadline = now + dt.timedelta(seconds=rollout.device_timeout_seconds)
    rows = list(RolloutDevice.objects.filter(rollout=rollout).filter(rows_filter).values_list("pk", "device_id"))
    device_ids = [device_id for _, device_id in rows]
    if not device_ids:
        return 0
    RolloutDevice.objects.filter(pk__in=[pk for pk, _ in rows]).update(
        state=UpdateState.ASSIGNED,
        reason="retry" if retry else "",
        attempts=F("attempts") + 1,
        assigned_at=now,
        deadline_at=deadline,
        next_retry_at=None,
    )
    services.director_assign(device_ids=device_ids, artifact=rollout.artifact, rollout_id=rollout.pk)
    _notify(device_ids)
    return len(device_ids)


def _notify(device_ids: list[str]) -> None:
    from ota import tasks

    for start in range(0, len(device_ids), tasks.NOTIFY_BATCH):
        batch = device_ids[start : start + tasks.NOTIFY_BATCH]
        transaction.on_commit(lambda batch=batch: tasks.publish_assignments.delay(batch))


def _locked(rollout: Rollout) -> Rollout:
    # Operators (API) and the gate tick change the same rollout: every transition re-reads it locked.
    return Rollout.objects.select_for_update().select_related("artifact").get(pk=rollout.pk)


def _transition(rollout: Rollout, *, actor: Actor, action: str, to: str, before: str, extra: dict | None = None):
    audit_record(
        actor=actor,
        action=f"rollout.{action}",
        object_type="rollout",
        object_id=str(rollout.pk),
        before={"state": before},
        after={"state": to, "stage": rollout.current_stage, **(extra or {})},
    )


@transaction.atomic
def rollout_start(*, actor: Actor, rollout: Rollout, now: dt.datetime | None = None) -> Rollout:
    """Assign every targeted device to its cohort and open the first stage."""
    now = now or timezone.now()
    rollout = _locked(rollout)
    if rollout.state != RolloutState.DRAFT:
        raise ApiError("invalid_state", f"Only a draft can start; this rollout is {rollout.state}.", status_code=409)
    if rollout.artifact.revoked_at is not None:
        raise ApiError("release_revoked", "This release has been revoked.", status_code=409)
    inserted = _insert_targets(rollout, join_at_stage=None)
    if inserted == 0:
        raise ApiError("no_targets", "No device matches the selector (or all are in other rollouts).", status_code=409)
    rollout.state = RolloutState.RUNNING
    rollout.started_at = now
    rollout.current_stage = -1
    rollout.save(update_fields=["state", "started_at", "current_stage"])
    _transition(
        rollout,
        actor=actor,
        action="start",
        to=RolloutState.RUNNING,
        before=RolloutState.DRAFT,
        extra={"targets": inserted},
    )
    _open_stage(rollout, 0, actor=actor, now=now)
    return rollout


def _open_stage(rollout: Rollout, stage: int, *, actor: Actor, now: dt.datetime) -> int:
    rollout.current_stage = stage
    rollout.stage_started_at = now
    rollout.save(update_fields=["current_stage", "stage_started_at"])
    assigned = _assign(rollout, Q(stage=stage, state=UpdateState.PENDING) & _reached(rollout, stage), now=now)
    audit_record(
        actor=actor,
        action="rollout.stage_open",
        object_type="rollout",
        object_id=str(rollout.pk),
        after={"stage": stage, "share": rollout.stages[stage]["share"], "assigned": assigned},
    )
    return assigned


def _finish(rollout: Rollout, *, state: str, now: dt.datetime) -> None:
    rollout.state = state
    rollout.finished_at = now
    rollout.save(update_fields=["state", "finished_at"])
    # Frees the devices for later rollouts (the partial unique index only counts active rows).
    RolloutDevice.objects.filter(rollout=rollout, active=True).update(active=False)


@transaction.atomic
def rollout_advance(
    *, actor: Actor, rollout: Rollout, now: dt.datetime | None = None, reason: str = "manual"
) -> Rollout:
    """Open the next stage now (or complete the rollout after its last stage)."""
    now = now or timezone.now()
    rollout = _locked(rollout)
    if rollout.state not in LIVE_STATES:
        raise ApiError("invalid_state", f"Cannot advance a {rollout.state} rollout.", status_code=409)
    if rollout.current_stage + 1 >= len(rollout.stages):
        before = rollout.state
        _finish(rollout, state=RolloutState.COMPLETED, now=now)
        _transition(
            rollout, actor=actor, action="complete", to=RolloutState.COMPLETED, before=before, extra={"reason": reason}
        )
        return rollout
    _transition(
        rollout,
        actor=actor,
        action="advance",
        to=rollout.state,
        before=rollout.state,
        extra={"reason": reason, "to_stage": rollout.current_stage + 1},
    )
    _open_stage(rollout, rollout.current_stage + 1, actor=actor, now=now)
    return rollout


@transaction.atomic
def rollout_pause(*, actor: Actor, rollout: Rollout, reason: str = "manual") -> Rollout:
    rollout = _locked(rollout)
    if rollout.state != RolloutState.RUNNING:
        raise ApiError(
            "invalid_state", f"Only a running rollout can pause; this one is {rollout.state}.", status_code=409
        )
    rollout.state = RolloutState.PAUSED
    rollout.save(update_fields=["state"])
    _transition(
        rollout,
        actor=actor,
        action="pause",
        to=RolloutState.PAUSED,
        before=RolloutState.RUNNING,
        extra={"reason": reason},
    )
    return rollout


@transaction.atomic
def rollout_resume(*, actor: Actor, rollout: Rollout, now: dt.datetime | None = None) -> Rollout:
    rollout = _locked(rollout)
    if rollout.state != RolloutState.PAUSED:
        raise ApiError(
            "invalid_state", f"Only a paused rollout can resume; this one is {rollout.state}.", status_code=409
        )
    rollout.state = RolloutState.RUNNING
    # The soak restarts: a stage must be watched healthy for its full soak after an operator resumes.
    rollout.stage_started_at = now or timezone.now()
    rollout.save(update_fields=["state", "stage_started_at"])
    _transition(rollout, actor=actor, action="resume", to=RolloutState.RUNNING, before=RolloutState.PAUSED)
    return rollout


@transaction.atomic
def rollout_abort(*, actor: Actor, rollout: Rollout, now: dt.datetime | None = None) -> Rollout:
    """Stop assigning: devices that have the release keep it, the others are never assigned."""
    now = now or timezone.now()
    rollout = _locked(rollout)
    if rollout.state not in [*LIVE_STATES, RolloutState.DRAFT]:
        raise ApiError("invalid_state", f"Cannot abort a {rollout.state} rollout.", status_code=409)
    before = rollout.state
    _finish(rollout, state=RolloutState.ABORTED, now=now)
    _transition(rollout, actor=actor, action="abort", to=RolloutState.ABORTED, before=before)
    return rollout


@transaction.atomic
def rollout_rollback(
    *,
    actor: Actor,
    rollout: Rollout,
    reason: str = "manual",
    now: dt.datetime | None = None,
    snapshot: dict | None = None,
) -> Rollout:
    """Make the director assign the previous release to every device that got this one, marked as a
    signed rollback (the agent accepts the lower release counter only with that mark)."""
    now = now or timezone.now()
    rollout = _locked(rollout)
    if rollout.state not in [*LIVE_STATES, RolloutState.COMPLETED]:
        raise ApiError("invalid_state", f"Cannot roll back a {rollout.state} rollout.", status_code=409)
    before = rollout.state
    reached = (
        RolloutDevice.objects.filter(rollout=rollout)
        .filter(_reached(rollout, rollout.current_stage))
        .exclude(state=UpdateState.PENDING)
        .exclude(stage__isnull=True)
    )
    # Only devices the director still points at this rollout's release: one that a later rollout
    # moved on is left alone.
    moved = 0
    by_previous = reached.values("previous_artifact_id").annotate(n=Count("id"))
    for group in by_previous:
        ids = list(
            reached.filter(previous_artifact_id=group["previous_artifact_id"]).values_list("device_id", flat=True)
        )
        ids = list(
            DirectorState.objects.filter(device_id__in=ids, artifact_id=rollout.artifact_id).values_list(
                "device_id", flat=True
            )
        )
        previous = Artifact.objects.filter(pk=group["previous_artifact_id"]).first()
        services.director_assign(
            device_ids=ids, artifact=previous, rollback=previous is not None, rollout_id=rollout.pk
        )
        _notify(ids)
        moved += len(ids)
    _finish(rollout, state=RolloutState.ROLLED_BACK, now=now)
    _transition(
        rollout,
        actor=actor,
        action="rollback",
        to=RolloutState.ROLLED_BACK,
        before=before,
        extra={"reason": reason, "devices_reassigned": moved, **({"metrics": snapshot} if snapshot else {})},
    )
    return rollout


# --- the gate tick --------------------------------------------------------------------------------


def _expire_and_retry(rollout: Rollout, now: dt.datetime) -> dict:
    """Devices silent past their deadline become timed_out; failed ones whose backoff has passed are
    assigned again (within the maintenance window)."""
    # Conditional UPDATE: a status report arriving at the same moment either lands first (the row is no
    # longer in flight and is skipped) or after (it overwrites timed_out with what the device says).
    timed_out_ids = list(
        RolloutDevice.objects.filter(
            _reached(rollout, rollout.current_stage),
            rollout=rollout,
            stage__lte=rollout.current_stage,
            state__in=IN_FLIGHT_STATES,
            deadline_at__lt=now,
        ).values_list("id", flat=True)[:10000]
    )
    timed_out = RolloutDevice.objects.filter(pk__in=timed_out_ids, state__in=IN_FLIGHT_STATES).update(
        state=UpdateState.TIMED_OUT, reason="deadline_passed"
    )
    if timed_out:
        RolloutDevice.objects.filter(pk__in=timed_out_ids, attempts__lte=rollout.max_retries).update(
            next_retry_at=now + dt.timedelta(seconds=rollout.retry_backoff_seconds)
        )
    retried = 0
    if _in_window(rollout, now):
        retried = _assign(
            rollout,
            _reached(rollout, rollout.current_stage)
            & Q(
                stage__lte=rollout.current_stage,
                state__in=FAILED_STATES,
                next_retry_at__lte=now,
                attempts__lte=rollout.max_retries,
            ),
            now=now,
            retry=True,
        )
    return {"timed_out": timed_out, "retried": retried}


def rollout_evaluate(*, rollout: Rollout, now: dt.datetime | None = None) -> dict:
    """One gate evaluation of one running rollout: timeouts and retries, then the gates of the current
    stage against the control cohort, then the decision (advance, complete, wait, pause or roll back).
    Writes one audit event with the metric snapshot and the decision; returns the decision record."""
    now = now or timezone.now()
    with transaction.atomic():
        rollout = _locked(rollout)
        if rollout.state != RolloutState.RUNNING:
            return {"decision": "skip", "state": rollout.state}
        housekeeping = _expire_and_retry(rollout, now)
        stage = rollout.stages[rollout.current_stage]
        cohort, control = selectors.cohort_metrics(rollout=rollout, now=now)
        control_source = "control"
        if control.inferences > 0 or control.devices > 0:
            rollout.baseline = control.as_dict()
        elif rollout.baseline:
            # Nobody is left on the old release (a 100% stage): compare with the last control seen.
            control = gates.Metrics.from_dict(rollout.baseline)
            control_source = "baseline"
        results = gates.evaluate_gates(stage["gates"], cohort=cohort, control=control)
        verdict = gates.overall(results)
        soaked = now - rollout.stage_started_at >= dt.timedelta(seconds=stage["soak_seconds"])
        if verdict == gates.FAIL:
            decision = "rollback" if rollout.on_failure == OnFailure.ROLLBACK else "pause"
        elif verdict == gates.PASS and soaked and _in_window(rollout, now):
            decision = "complete" if rollout.current_stage + 1 >= len(rollout.stages) else "advance"
            # A rollout is complete when its devices are done, not only when the gates' evidence suffices:
            # completing stops following the devices' reports, so one still installing would be left in
            # limbo. Devices that stay silent reach timed_out (device_timeout_seconds), so this ends.
            if decision == "complete" and rollout.devices.filter(active=True, state__in=IN_FLIGHT_STATES).exists():
                decision = "wait"
        else:
            decision = "wait"
        snapshot = {
            "stage": rollout.current_stage,
            "cohort": cohort.as_dict(),
            "control": control.as_dict(),
            "control_source": control_source,
            "gates": [r.as_dict() for r in results],
            "verdict": verdict,
            "soaked": soaked,
            "decision": decision,
            **housekeeping,
        }
        rollout.last_decision = snapshot | {"at": now.isoformat()}
        rollout.save(update_fields=["baseline", "last_decision"])
        audit_record(
            actor=SYSTEM,
            action="rollout.gate_evaluation",
            object_type="rollout",
            object_id=str(rollout.pk),
            after=rollout.last_decision,  # with the evaluation's time, which the rollout page charts
        )
        if decision == "pause":
            rollout_pause(actor=SYSTEM, rollout=rollout, reason="gate_failed")
        elif decision == "rollback":
            rollout_rollback(actor=SYSTEM, rollout=rollout, reason="gate_failed", now=now, snapshot=snapshot)
        elif decision in ("advance", "complete"):
            rollout_advance(actor=SYSTEM, rollout=rollout, now=now, reason="gates_passed")
    return snapshot


def rollouts_tick(*, now: dt.datetime | None = None) -> list[dict]:
    """Evaluate every running rollout (the Celery beat task calls this every minute)."""
    now = now or timezone.now()
    results = []
    for rollout_id in Rollout.objects.filter(state=RolloutState.RUNNING).values_list("pk", flat=True):
        rollout = Rollout.objects.get(pk=rollout_id)
        try:
            results.append(rollout_evaluate(rollout=rollout, now=now))
        except Exception:  # one broken rollout must not stop the others' gates
            logger.exception("gate evaluation of rollout %s failed", rollout_id)
    return results


def rollout_sync_targets(*, rollout: Rollout, now: dt.datetime | None = None) -> int:
    """Bring in devices that match the selector since the start: they enter at the current stage (or
    their own later one), so earlier stages' cohorts never change; assign those already due."""
    now = now or timezone.now()
    with transaction.atomic():
        rollout = _locked(rollout)
        if rollout.state not in LIVE_STATES:
            return 0
        added = _insert_targets(rollout, join_at_stage=rollout.current_stage)
        if added and rollout.state == RolloutState.RUNNING:
            reached = _reached(rollout, rollout.current_stage)
            _assign(rollout, reached & Q(stage__lte=rollout.current_stage, state=UpdateState.PENDING), now=now)
        if added:
            audit_record(
                actor=SYSTEM,
                action="rollout.targets_joined",
                object_type="rollout",
                object_id=str(rollout.pk),
                after={"added": added},
            )
    return added
