"""The periodic work is scheduled and its tasks call the services."""

import datetime as dt

import pytest
from django.conf import settings

from fleet.celery import app
from fleet.models import AuditEvent
from ota import rollouts, tasks
from ota.models import RepositoryMetadata, RolloutState
from tests.ota.conftest import ACTOR, release
from tests.ota.test_rollouts import make_devices

pytestmark = pytest.mark.django_db


def test_beat_schedules_gates_target_sync_and_timestamps():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "ota.tasks.rollout_gates_tick",
        "ota.tasks.rollout_sync_targets",
        "ota.tasks.timestamp_refresh",
    } <= scheduled
    app.loader.import_default_modules()
    assert scheduled <= set(app.tasks)


def test_gate_tick_task_evaluates_running_rollouts(update_repo):
    make_devices(20)
    rollout = rollouts.rollout_create(
        actor=ACTOR, name="t", artifact=release(), selector={}, stages=[{"share": 0.5}, {"share": 1.0}]
    )
    rollouts.rollout_start(actor=ACTOR, rollout=rollout)
    assert tasks.rollout_gates_tick.delay().get() == 1  # no gates, no soak: advances
    rollout.refresh_from_db()
    assert rollout.current_stage == 1 and rollout.state == RolloutState.RUNNING
    make_devices(5, prefix="new")
    assert tasks.rollout_sync_targets.delay().get() == 5


def test_timestamp_task_resigns_only_when_due(update_repo):
    assert tasks.timestamp_refresh.delay().get() is False
    versions = RepositoryMetadata.objects.filter(repository="image", role="timestamp").count()
    from ota import services

    assert services.timestamp_refresh(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=20)) is True
    assert RepositoryMetadata.objects.filter(repository="image", role="timestamp").count() == versions + 1
    assert AuditEvent.objects.filter(action="ota.timestamp.resign").exists()


def test_targets_and_snapshot_are_resigned_before_they_expire(update_repo, tmp_path):
    """Weeks without a release must not let image targets expire on the devices."""
    from fleet_agent.uptane import UptaneClient
    from ota import services
    from tests.ota.conftest import ClientFetcher, enrolled, trust_for

    device, token = enrolled("cam-expiry")
    services.director_assign(device_ids=[device.id], artifact=release())
    before = RepositoryMetadata.objects.filter(repository="image", role="targets").order_by("-version").first()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=16)
    assert services.timestamp_refresh(now=later) is True
    after = RepositoryMetadata.objects.filter(repository="image", role="targets").order_by("-version").first()
    assert after.version == before.version + 1 and after.expires_at > before.expires_at + dt.timedelta(days=15)
    client = UptaneClient(
        trust_for(device, token), tmp_path / "tuf", image_fetcher=ClientFetcher(), director_fetcher=ClientFetcher(token)
    )
    assert client.check() is not None
