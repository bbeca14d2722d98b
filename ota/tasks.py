"""Celery tasks of the update system: thin wrappers that take ids, re-fetch and call a service."""

from celery import shared_task

from fleet import mqtt
from ota import notify, rollouts, services
from ota.models import Rollout, RolloutState

NOTIFY_BATCH = 500


@shared_task(autoretry_for=(mqtt.MqttUnavailable,), retry_backoff=True, retry_backoff_max=300, max_retries=20)
def publish_assignments(device_ids: list[str]) -> int:
    """Retained pointers on devices/{id}/ota/assign; retried while the broker is unreachable."""
    return notify.publish_assignments(device_ids)


@shared_task
def rollout_gates_tick() -> int:
    return len(rollouts.rollouts_tick())


@shared_task
def rollout_sync_targets() -> int:
    added = 0
    for rollout in Rollout.objects.filter(state__in=[RolloutState.RUNNING, RolloutState.PAUSED]):
        added += rollouts.rollout_sync_targets(rollout=rollout)
    return added


@shared_task
def timestamp_refresh() -> bool:
    return services.timestamp_refresh()
