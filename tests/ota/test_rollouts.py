"""Rollouts: cohorts, states, gates on the telemetry rollups, timeouts and retries. Time is driven by
passing ``now=`` into the services."""

import datetime as dt

import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.models import Device, DeviceGroup, DeviceStatus
from fleet.errors import ApiError
from fleet.models import AuditEvent
from ota import cohorts, rollouts, services
from ota.ingest import store_ota_status
from ota.models import DirectorState, Rollout, RolloutDevice, RolloutState, UpdateState
from telemetry import histogram
from telemetry.ingest_contract import DeviceMessage
from telemetry.models import InferenceRollup
from tests.ota.conftest import ACTOR, release

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
GATES = {
    "p95_latency_regression": {"threshold": 0.2, "min_samples": 200},
    "error_rate": {"threshold": 0.02, "min_samples": 200},
    "install_failure_rate": {"threshold": 0.25, "min_samples": 2},
}
STAGES = [
    {"share": 0.2, "soak_seconds": 600, "gates": GATES},
    {"share": 0.6, "soak_seconds": 600, "gates": GATES},
    {"share": 1.0, "soak_seconds": 600, "gates": GATES},
]


def make_devices(count: int, *, prefix: str = "cam", hardware: str = "rpi4", group=None, online=True) -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    Device.objects.bulk_create(
        [Device(id=i, hardware_class=hardware, status=DeviceStatus.ACTIVE, group=group, online=online) for i in ids]
    )
    return ids


@pytest.fixture
def fleet_on_v1(update_repo):
    """100 devices running detector 1.0.0 (assigned by the director), and release 2.0.0 ready."""
    ids = make_devices(100)
    v1 = release(version="1.0.0")
    services.director_assign(device_ids=ids, artifact=v1)
    return ids, v1, release(version="2.0.0")


def start(artifact, stages=STAGES, **kwargs) -> Rollout:
    rollout = rollouts.rollout_create(
        actor=ACTOR, name="detector 2", artifact=artifact, selector={}, stages=stages, **kwargs
    )
    return rollouts.rollout_start(actor=ACTOR, rollout=rollout, now=T0)


_seq = iter(range(1, 10**9))


def report(device_id: str, target: str, state: str, at: dt.datetime, reason: str = "") -> list:
    seq = next(_seq)
    body = {"v": 1, "seq": seq, "ts": at.isoformat(), "target": target, "state": state, "reason": reason}
    message = DeviceMessage(
        device_id=device_id, leaf="ota/status", seq=seq, ts=at, body=body, raw=b"{}", received_at=at
    )
    return store_ota_status([message])


def devices_in(rollout, *, assigned: bool) -> list[str]:
    rows = RolloutDevice.objects.filter(rollout=rollout)
    rows = rows.exclude(state=UpdateState.PENDING) if assigned else rows.filter(state=UpdateState.PENDING)
    return list(rows.values_list("device_id", flat=True))


def simulate(rollout, *, start: dt.datetime, minutes: int = 10, new_latency_ms: float = 50.0, new_errors: int = 0):
    """Assigned devices install the new release and report; everyone writes a rollup per minute: the new
    release with the given latency/errors, the old one at 50 ms without errors."""
    rollout.refresh_from_db()
    artifact = rollout.artifact
    new_ids = devices_in(rollout, assigned=True)
    for device_id in new_ids:
        if RolloutDevice.objects.get(rollout=rollout, device_id=device_id).state == UpdateState.ASSIGNED:
            report(device_id, artifact.target_path, "succeeded", start)
    old_ids = [i for i in Device.objects.values_list("id", flat=True) if i not in set(new_ids)]
    rows = []
    for minute in range(minutes):
        bucket = start + dt.timedelta(minutes=minute)
        for ids, version, latency, errors in (
            (new_ids, "2.0.0", new_latency_ms, new_errors),
            (old_ids, "1.0.0", 50.0, 0),
        ):
            for device_id in ids:
                hist = {}
                histogram.add(hist, latency, 20)
                rows.append(
                    InferenceRollup(
                        bucket=bucket,
                        device_id=device_id,
                        model_name="detector",
                        model_version=version,
                        count=20,
                        error_count=errors,
                        confidence_sum=18.0,
                        confidence_count=20,
                        latency_sum_ms=latency * 20,
                        latency_hist=hist,
                    )
                )
    InferenceRollup.objects.bulk_create(rows, ignore_conflicts=True)


# --- cohorts --------------------------------------------------------------------------------------


@given(
    rollout_id=st.integers(min_value=1, max_value=10**9),
    device_id=st.from_regex(r"[a-z0-9][a-z0-9-]{2,62}", fullmatch=True),
    cuts=st.lists(st.integers(min_value=1, max_value=cohorts.BUCKETS), min_size=1, max_size=6, unique=True),
)
@settings(max_examples=200, deadline=None)
def test_cohort_is_stable_and_stages_are_nested(rollout_id, device_id, cuts):
    shares = [c / cohorts.BUCKETS for c in sorted(cuts)]
    bucket = cohorts.cohort_bucket(rollout_id, device_id)
    assert bucket == cohorts.cohort_bucket(rollout_id, device_id)
    assert 0 <= bucket < cohorts.BUCKETS
    stage = cohorts.stage_of_bucket(bucket, shares)
    limits = cohorts.stage_limits(shares)
    for index, limit in enumerate(limits):
        # In stage <= i exactly when the bucket is below stage i's cumulative limit: a stage's devices
        # stay in every later stage, and no device skips the stage its share puts it in.
        assert (stage is not None and stage <= index) == (bucket < limit)


@given(shares=st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=4, unique=True))
@settings(max_examples=50, deadline=None)
def test_stage_shares_hold_over_many_devices(shares):
    shares = sorted(shares)
    counts = [0] * len(shares)
    n = 4000
    for i in range(n):
        stage = cohorts.stage_of_bucket(cohorts.cohort_bucket(7, f"dev-{i:05d}"), shares)
        if stage is not None:
            counts[stage] += 1
    cumulative = 0
    for index, share in enumerate(shares):
        cumulative += counts[index]
        assert abs(cumulative / n - share) < 0.04


def test_sql_cohorts_match_the_python_hash(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    rows = list(RolloutDevice.objects.filter(rollout=rollout).values_list("device_id", "bucket", "stage"))
    assert len(rows) == 100
    for device_id, bucket, stage in rows:
        assert bucket == cohorts.cohort_bucket(rollout.pk, device_id)
        assert stage == cohorts.stage_of_bucket(bucket, [s["share"] for s in STAGES])
    # The fallback for databases without sha256() in SQL gives the same cohorts.
    other = rollouts.rollout_create(actor=ACTOR, name="copy", artifact=v2, selector={}, stages=STAGES)
    RolloutDevice.objects.filter(rollout=rollout).update(active=False)
    rollouts._insert_targets_python(other, join_at_stage=None)
    for device_id, bucket, stage in RolloutDevice.objects.filter(rollout=other).values_list(
        "device_id", "bucket", "stage"
    ):
        assert bucket == cohorts.cohort_bucket(other.pk, device_id)
        assert stage == cohorts.stage_of_bucket(bucket, [s["share"] for s in STAGES])


def test_start_assigns_the_first_cohort_and_notifies_it(fleet_on_v1, no_broker, django_capture_on_commit_callbacks):
    _ids, v1, v2 = fleet_on_v1
    with django_capture_on_commit_callbacks(execute=True):
        rollout = start(v2)
    assert rollout.state == RolloutState.RUNNING and rollout.current_stage == 0
    first = set(RolloutDevice.objects.filter(rollout=rollout, stage=0).values_list("device_id", flat=True))
    assert 5 <= len(first) <= 40
    assert set(devices_in(rollout, assigned=True)) == first
    assert set(DirectorState.objects.filter(artifact=v2).values_list("device_id", flat=True)) == first
    assert DirectorState.objects.filter(artifact=v1).count() == 100 - len(first)
    assert RolloutDevice.objects.filter(rollout=rollout, previous_artifact=v1).count() == 100
    assert {topic for topic, _ in no_broker} == {f"devices/{i}/ota/assign" for i in first}
    assert AuditEvent.objects.filter(action="rollout.start", object_id=str(rollout.pk)).exists()


def test_incompatible_hardware_is_never_targeted(update_repo):
    make_devices(10, prefix="pi")
    make_devices(10, prefix="jet", hardware="jetson")
    artifact = release(hardware=("rpi4",))
    rollout = rollouts.rollout_create(
        actor=ACTOR,
        name="x",
        artifact=artifact,
        selector={"hardware_classes": ["rpi4", "jetson"]},
        stages=[{"share": 1.0}],
    )
    rollouts.rollout_start(actor=ACTOR, rollout=rollout, now=T0)
    targeted = set(RolloutDevice.objects.filter(rollout=rollout).values_list("device_id", flat=True))
    assert targeted == {f"pi-{i:04d}" for i in range(10)}


def test_selector_groups_and_dry_run(update_repo):
    lab = DeviceGroup.objects.create(name="lab")
    make_devices(30, prefix="lab", group=lab)
    make_devices(30, prefix="prod")
    artifact = release()
    dry = rollouts.rollout_dry_run(
        selector={"groups": ["lab"]}, artifact=artifact, stages=[{"share": 0.5}, {"share": 1.0}]
    )
    assert dry.targeted == 30 and dry.per_stage == [15, 15] and dry.busy == 0
    assert RolloutDevice.objects.count() == 0


def test_a_device_is_in_at_most_one_live_rollout(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    first = start(v2)
    other = release(name="classifier", version="1.0.0")
    second = rollouts.rollout_create(actor=ACTOR, name="c", artifact=other, selector={}, stages=[{"share": 1.0}])
    with pytest.raises(ApiError) as caught:
        rollouts.rollout_start(actor=ACTOR, rollout=second, now=T0)
    assert caught.value.error_code == "no_targets"
    rollouts.rollout_abort(actor=ACTOR, rollout=first, now=T0)
    second.refresh_from_db()
    rollouts.rollout_start(actor=ACTOR, rollout=second, now=T0)
    assert RolloutDevice.objects.filter(rollout=second).count() == 100


def test_devices_matching_later_enter_at_the_current_stage(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    rollouts.rollout_advance(actor=ACTOR, rollout=rollout, now=T0 + dt.timedelta(minutes=1))
    stage_devices = {
        s: set(RolloutDevice.objects.filter(rollout=rollout, stage=s).values_list("device_id", flat=True))
        for s in (0, 1)
    }
    late = make_devices(60, prefix="late")
    added = rollouts.rollout_sync_targets(rollout=rollout, now=T0 + dt.timedelta(minutes=2))
    assert added == 60
    for s in (0, 1):  # earlier cohorts are unchanged
        assert (
            set(
                RolloutDevice.objects.filter(rollout=rollout, stage=s)
                .exclude(device_id__in=late)
                .values_list("device_id", flat=True)
            )
            == stage_devices[s]
        )
    late_rows = RolloutDevice.objects.filter(rollout=rollout, device_id__in=late)
    assert not late_rows.filter(stage=0).exists()
    for row in late_rows:
        natural = cohorts.stage_of_bucket(row.bucket, [s["share"] for s in STAGES])
        assert row.stage == max(natural, 1)
        assert (row.state == UpdateState.ASSIGNED) == (row.stage <= 1)


# --- states ---------------------------------------------------------------------------------------


def test_state_machine_refuses_invalid_transitions(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    draft = rollouts.rollout_create(actor=ACTOR, name="d", artifact=v2, selector={}, stages=STAGES)
    for action in (rollouts.rollout_pause, rollouts.rollout_resume):
        with pytest.raises(ApiError):
            action(actor=ACTOR, rollout=draft)
    rollout = rollouts.rollout_start(actor=ACTOR, rollout=draft, now=T0)
    with pytest.raises(ApiError):
        rollouts.rollout_start(actor=ACTOR, rollout=rollout, now=T0)
    rollouts.rollout_pause(actor=ACTOR, rollout=rollout)
    rollouts.rollout_resume(actor=ACTOR, rollout=rollout, now=T0)
    rollouts.rollout_abort(actor=ACTOR, rollout=rollout, now=T0)
    with pytest.raises(ApiError):
        rollouts.rollout_advance(actor=ACTOR, rollout=rollout, now=T0)
    actions = list(
        AuditEvent.objects.filter(object_type="rollout", object_id=str(rollout.pk)).values_list("action", flat=True)
    )
    assert {"rollout.create", "rollout.start", "rollout.pause", "rollout.resume", "rollout.abort"} <= set(actions)


def test_invalid_stages_are_refused(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    for stages in (
        [],
        [{"share": 0.5}, {"share": 0.4}],
        [{"share": 1.5}],
        [{"share": 1.0, "gates": {"nope": {"threshold": 1}}}],
    ):
        with pytest.raises(ApiError):
            rollouts.rollout_create(actor=ACTOR, name="bad", artifact=v2, selector={}, stages=stages)


# --- gates ----------------------------------------------------------------------------------------


def test_healthy_cohorts_carry_the_rollout_to_everyone(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    now = T0
    for stage in range(3):
        simulate(rollout, start=now)
        early = rollouts.rollout_evaluate(rollout=rollout, now=now + dt.timedelta(minutes=5))
        assert early["decision"] == "wait" and early["verdict"] == "pass" and not early["soaked"]
        now = now + dt.timedelta(minutes=11)
        decision = rollouts.rollout_evaluate(rollout=rollout, now=now)
        assert decision["stage"] == stage
        assert decision["decision"] == ("complete" if stage == 2 else "advance"), decision
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.COMPLETED
    assert decision["control_source"] == "baseline"  # nobody was left on 1.0.0 in the last stage
    assert DirectorState.objects.filter(artifact=v2, rollback=False).count() == 100
    assert not RolloutDevice.objects.filter(rollout=rollout, active=True).exists()
    evaluations = AuditEvent.objects.filter(action="rollout.gate_evaluation", object_id=str(rollout.pk))
    assert evaluations.count() == 6
    assert {"cohort", "control", "gates", "decision"} <= set(evaluations.first().after)


def test_rollout_does_not_complete_while_a_device_is_still_installing(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    install_gate = {"install_failure_rate": {"threshold": 0.25, "min_samples": 2}}
    rollout = start(v2, stages=[{"share": 1.0, "soak_seconds": 0, "gates": install_gate}])
    simulate(rollout, start=T0)  # every device reports succeeded ...
    straggler = devices_in(rollout, assigned=True)[0]
    report(straggler, v2.target_path, "health_checking", T0 + dt.timedelta(seconds=30))  # ... but this one
    waiting = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=11))
    assert (waiting["verdict"], waiting["decision"]) == ("pass", "wait")
    report(straggler, v2.target_path, "succeeded", T0 + dt.timedelta(minutes=12))
    done = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=13))
    assert done["decision"] == "complete"
    assert RolloutDevice.objects.get(rollout=rollout, device_id=straggler).state == UpdateState.SUCCEEDED


def test_slower_cohort_rolls_back_by_itself(fleet_on_v1, no_broker, django_capture_on_commit_callbacks):
    _ids, v1, v2 = fleet_on_v1
    rollout = start(v2, on_failure="rollback")
    got_v2 = set(devices_in(rollout, assigned=True))
    simulate(rollout, start=T0, new_latency_ms=90.0)
    with django_capture_on_commit_callbacks(execute=True):
        decision = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=5))
    gate = {g["name"]: g for g in decision["gates"]}["p95_latency_regression"]
    assert gate["status"] == "fail" and gate["value"] > 0.5
    assert decision["decision"] == "rollback"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK
    # The director now names the previous release, as a signed rollback, for every device that got 2.0.0.
    back = DirectorState.objects.filter(device_id__in=got_v2)
    assert {(s.artifact_id, s.rollback, s.dirty) for s in back} == {(v1.pk, True, True)}
    assert DirectorState.objects.filter(artifact=v2).count() == 0
    assert DirectorState.objects.exclude(device_id__in=got_v2).filter(rollback=True).count() == 0
    assert {f"devices/{i}/ota/assign" for i in got_v2} <= {topic for topic, _ in no_broker}
    event = AuditEvent.objects.get(action="rollout.rollback", object_id=str(rollout.pk))
    assert event.after["reason"] == "gate_failed" and event.after["devices_reassigned"] == len(got_v2)


def test_failing_gate_pauses_when_so_configured(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2, on_failure="pause")
    simulate(rollout, start=T0, new_errors=5)
    decision = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=11))
    assert decision["decision"] == "pause"
    assert {g["name"]: g["status"] for g in decision["gates"]}["error_rate"] == "fail"
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    assert rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=12))["decision"] == "skip"


def test_not_enough_data_waits_instead_of_passing(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    decision = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=30))
    assert decision["decision"] == "wait"
    assert {g["status"] for g in decision["gates"]} == {"wait"}
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING and rollout.current_stage == 0


def test_install_failures_fail_the_gate(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2, on_failure="pause", max_retries=0)
    for device_id in devices_in(rollout, assigned=True):
        report(device_id, v2.target_path, "downloading", T0)
        report(device_id, v2.target_path, "failed", T0 + dt.timedelta(seconds=5), reason="health_check_failed")
    decision = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=1))
    assert {g["name"]: g["status"] for g in decision["gates"]}["install_failure_rate"] == "fail"
    assert decision["decision"] == "pause"


def test_silent_devices_time_out_and_are_retried_with_backoff(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    stages = [{"share": 0.2, "soak_seconds": 86400}, {"share": 1.0}]  # no gates: only housekeeping here
    rollout = start(v2, stages=stages, device_timeout_seconds=600, max_retries=1, retry_backoff_seconds=120)
    first = devices_in(rollout, assigned=True)
    rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=11))
    rows = RolloutDevice.objects.filter(rollout=rollout, device_id__in=first)
    assert {r.state for r in rows} == {UpdateState.TIMED_OUT}
    assert {r.next_retry_at for r in rows} == {T0 + dt.timedelta(minutes=13)}
    rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=14))
    assert {(r.state, r.attempts) for r in rows.all()} == {(UpdateState.ASSIGNED, 2)}
    rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=30))
    rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=40))
    assert {(r.state, r.attempts) for r in rows.all()} == {(UpdateState.TIMED_OUT, 2)}  # retries used up


def test_maintenance_window_holds_assignments(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2, window_start_hour=2, window_end_hour=4, stages=[{"share": 0.2}, {"share": 1.0}])
    decision = rollouts.rollout_evaluate(rollout=rollout, now=T0 + dt.timedelta(minutes=1))  # 12:01 UTC
    assert decision["decision"] == "wait"
    decision = rollouts.rollout_evaluate(rollout=rollout, now=dt.datetime(2026, 6, 2, 3, 0, tzinfo=dt.UTC))
    assert decision["decision"] == "advance"


# --- device status reports ------------------------------------------------------------------------


def test_status_reports_move_the_device_state_once_per_seq(fleet_on_v1):
    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    device_id = devices_in(rollout, assigned=True)[0]
    at = T0 + dt.timedelta(seconds=30)
    body = {"v": 1, "seq": 5, "ts": at.isoformat(), "target": v2.target_path, "state": "installing"}
    message = DeviceMessage(device_id=device_id, leaf="ota/status", seq=5, ts=at, body=body, raw=b"{}", received_at=at)
    assert store_ota_status([message, message]) == []
    row = RolloutDevice.objects.get(rollout=rollout, device_id=device_id)
    assert row.state == UpdateState.INSTALLING
    from ota.models import UpdateStatusReport

    assert UpdateStatusReport.objects.filter(device_id=device_id, seq=5).count() == 1
    # An older report arriving late does not rewind the state.
    report(device_id, v2.target_path, "downloading", T0)
    row.refresh_from_db()
    assert row.state == UpdateState.INSTALLING


def test_invalid_status_reports_are_rejected_with_reasons(fleet_on_v1):
    at = timezone.now()

    def msg(body):
        return DeviceMessage(
            device_id="cam-0001", leaf="ota/status", seq=next(_seq), ts=at, body=body, raw=b"x", received_at=at
        )

    rejections = store_ota_status(
        [
            msg({"state": "installing"}),
            msg({"target": 5, "state": "installing"}),
            msg({"target": "a/b/c", "state": "exploded"}),
            msg({"target": "a/b/c", "state": "timed_out"}),
            msg({"target": "a/b/c", "state": "failed"}),
        ]
    )
    assert [r.reason for r in rejections] == [
        "field_missing",
        "field_type",
        "unknown_state",
        "unknown_state",
        "reason_missing",
    ]


def test_python_gate_sums_match_postgresql(fleet_on_v1):
    """The embedded run (SQLite) sums rollups in Python; it must agree with the SQL the fleet uses."""
    from ota import selectors

    _ids, _v1, v2 = fleet_on_v1
    rollout = start(v2)
    simulate(rollout, start=T0, new_latency_ms=70.0, new_errors=1)
    rollout.refresh_from_db()
    now = T0 + dt.timedelta(minutes=10)
    begin = max(rollout.stage_started_at, now - dt.timedelta(seconds=rollout.gate_window_seconds))
    params = {
        "cur": 0,
        "rid": rollout.pk,
        "name": "detector",
        "ver": "2.0.0",
        "start": begin,
        "end": now,
        "floor": selectors._control_floor(rollout),
        "reached": cohorts.reached_filter_limit([s["share"] for s in STAGES], 0),
    }
    sql_sides, sql_hists = selectors._inference_totals_sql(params)
    py_sides, py_hists = selectors._inference_totals_python(rollout, params)
    assert sql_hists == py_hists and sql_hists["cohort"] and sql_hists["control"]
    for side in ("cohort", "control"):
        assert sql_sides[side] == pytest.approx(py_sides[side])
    assert sql_sides["cohort"]["errors"] > 0 and sql_sides["control"]["errors"] == 0
