"""Rollout start at scale: the SQL cohort hash against its Python twin over many ids, two starts racing
for the same devices, and the dry run against what a start really takes."""

import threading

import pytest
from django.db import connection

from devices.models import DeviceGroup
from fleet.errors import ApiError
from ota import cohorts, rollouts, services
from ota.models import RolloutDevice, RolloutState
from tests.ota.conftest import ACTOR, release
from tests.ota.test_rollouts import T0, make_devices

# The expression rollouts used before BUCKET_SQL cut the digest before hex-encoding it: rollouts
# started before that change get late joiners (rollout_sync_targets) from the new one, so both must agree.
PREVIOUS_BUCKET_SQL = (
    "mod((('x' || substr(encode(sha256(convert_to(%s || ':' || {device}, 'UTF8')), 'hex'), 1, 8))::bit(32)::bigint)"
    ", 10000)"
)


@pytest.mark.django_db
def test_sql_buckets_equal_the_python_hash_on_many_ids():
    device_ids = [f"dev-{i:07d}" for i in range(0, 3_000_000, 997)]
    device_ids += ["a", "cam-ü-01", "カメラ-7", "x" * 200, "edge:42:ab"]
    rollout_ids = [1, 7, 4242, 2_147_483_647]
    new_sql = cohorts.BUCKET_SQL.format(device="d.id")
    old_sql = PREVIOUS_BUCKET_SQL.format(device="d.id")
    with connection.cursor() as cursor:
        for rollout_id in rollout_ids:
            cursor.execute(
                f"SELECT d.id, {new_sql}, {old_sql} FROM unnest(%s::text[]) AS d(id)",  # noqa: S608
                [str(rollout_id), str(rollout_id), device_ids],
            )
            rows = cursor.fetchall()
            assert len(rows) == len(device_ids)
            for device_id, bucket, previous in rows:
                assert bucket == previous == cohorts.cohort_bucket(rollout_id, device_id), (rollout_id, device_id)
    # Not a constant: the ids spread over the whole range.
    assert len({cohorts.cohort_bucket(1, d) for d in device_ids}) > 2000


def _start_in_thread(rollout, results: dict, key: str, before_commit: threading.Event | None = None, hold=None):
    """rollout_start in its own connection; optionally keep its transaction open until ``hold`` is set."""
    from django.db import transaction

    try:
        with transaction.atomic():
            rollouts.rollout_start(actor=ACTOR, rollout=rollout, now=T0)
            if before_commit is not None:
                before_commit.set()
                hold.wait(timeout=30)
        results[key] = "started"
    except ApiError as exc:
        results[key] = exc.error_code
    except Exception as exc:  # reported to the test, which asserts on what the other thread saw
        results[key] = repr(exc)
    finally:
        if before_commit is not None:
            before_commit.set()
        connection.close()


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_two_starts_racing_for_the_same_devices_give_them_to_one(update_repo):
    """The first start holds its transaction open after inserting; the second must wait for it, then
    find every device taken (409 no_targets), never fail on the unique index."""
    make_devices(100)
    first = rollouts.rollout_create(
        actor=ACTOR, name="a", artifact=release(version="2.0.0"), selector={}, stages=[{"share": 1.0}]
    )
    second = rollouts.rollout_create(
        actor=ACTOR, name="b", artifact=release(name="classifier"), selector={}, stages=[{"share": 1.0}]
    )
    results: dict[str, str] = {}
    inserted, hold = threading.Event(), threading.Event()
    a = threading.Thread(target=_start_in_thread, args=(first, results, "first", inserted, hold))
    a.start()
    assert inserted.wait(timeout=30)
    b = threading.Thread(target=_start_in_thread, args=(second, results, "second"))
    b.start()
    for _ in range(300):  # until the second start is blocked behind the first one's transaction
        if _lock_waiters() or not b.is_alive():
            break
        threading.Event().wait(0.05)
    blocked = _lock_waiters() > 0
    hold.set()
    a.join(timeout=60)
    b.join(timeout=60)
    assert blocked
    assert results == {"first": "started", "second": "no_targets"}
    assert RolloutDevice.objects.filter(rollout=first).count() == 100
    assert not RolloutDevice.objects.filter(rollout=second).exists()
    second.refresh_from_db()
    assert second.state == RolloutState.DRAFT


@pytest.mark.django_db
def test_dry_run_counts_what_start_takes(update_repo):
    lab = DeviceGroup.objects.create(name="lab")
    lab_ids = make_devices(60, prefix="lab", group=lab)
    make_devices(240, prefix="prod")
    v1 = release(version="1.0.0")
    services.director_assign(device_ids=lab_ids, artifact=v1)
    classifier = release(name="classifier")
    busy = rollouts.rollout_create(
        actor=ACTOR, name="lab", artifact=classifier, selector={"groups": ["lab"]}, stages=[{"share": 1.0}]
    )
    rollouts.rollout_start(actor=ACTOR, rollout=busy, now=T0)
    artifact = release(version="2.0.0")
    stages = [{"share": 0.1}, {"share": 0.5}, {"share": 1.0}]

    dry = rollouts.rollout_dry_run(selector={}, artifact=artifact, stages=stages)
    rollout = rollouts.rollout_create(actor=ACTOR, name="all", artifact=artifact, selector={}, stages=stages)
    rollouts.rollout_start(actor=ACTOR, rollout=rollout, now=T0)

    rows = RolloutDevice.objects.filter(rollout=rollout)
    assert (dry.targeted, dry.busy, dry.untargeted) == (240, 60, 0)
    assert rows.count() == dry.targeted == sum(dry.per_stage)
    assert not rows.filter(device_id__in=lab_ids).exists()
    # Per stage, the preview is the share of the targets (the draft's cohorts are only drawn at start, from
    # its id); the real cohorts are the hash's draw: within a few standard deviations of it.
    cumulative_dry = cumulative_real = 0
    for stage, share in enumerate(s["share"] for s in stages):
        cumulative_dry += dry.per_stage[stage]
        cumulative_real += rows.filter(stage=stage).count()
        assert cumulative_dry == round(240 * share)
        assert abs(cumulative_real - cumulative_dry) <= 5 * (240 * share * (1 - share)) ** 0.5
    assert cumulative_real == 240


@pytest.mark.django_db
def test_director_assign_in_sql_writes_what_the_orm_fallback_writes(update_repo):
    """director_assign's one-statement upsert (PostgreSQL) against its ORM twin (the embedded SQLite run),
    on devices new to the director and on devices with signed, clean rows at a higher version."""
    from ota.models import DirectorState

    make_devices(6, prefix="sql")
    make_devices(6, prefix="orm")
    v1, v2 = release(version="1.0.0"), release(version="2.0.0")
    rollout = rollouts.rollout_create(actor=ACTOR, name="r", artifact=v2, selector={}, stages=[{"share": 1.0}])
    for prefix in ("sql", "orm"):
        services._director_assign_orm(
            device_ids=[f"{prefix}-{i:04d}" for i in range(3)], artifact=v1, rollback=False, rollout_id=None
        )
        DirectorState.objects.filter(device__id__startswith=prefix).update(
            version=7, dirty=False, timestamp_json=b"signed", expires_at=T0
        )
    ids = {prefix: [f"{prefix}-{i:04d}" for i in range(6)] for prefix in ("sql", "orm")}
    assert services.director_assign(device_ids=ids["sql"], artifact=v2, rollback=True, rollout_id=rollout.pk) == 6
    services._director_assign_orm(device_ids=ids["orm"], artifact=v2, rollback=True, rollout_id=rollout.pk)

    fields = ["artifact_id", "rollback", "rollout_id", "version", "dirty", "timestamp_json", "expires_at"]

    def rows(prefix):
        return [
            [bytes(v) if isinstance(v, memoryview) else v for v in row]
            for row in DirectorState.objects.filter(device_id__in=ids[prefix])
            .order_by("device_id")
            .values_list(*fields)
        ]

    assert rows("sql") == rows("orm")
    assert rows("sql")[0] == [v2.pk, True, rollout.pk, 7, True, b"signed", T0]
    assert rows("sql")[5] == [v2.pk, True, rollout.pk, 0, True, None, None]
    assert all(row.updated_at is not None for row in DirectorState.objects.filter(device_id__in=ids["sql"]))
