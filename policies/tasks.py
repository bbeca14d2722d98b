"""Thin Celery tasks: take ids, re-fetch, call the publisher."""

from itertools import islice

from celery import shared_task

from fleet.mqtt import MqttUnavailable
from policies import notify, services

FAN_OUT = 2000


# The broker being away is the expected failure: retry with backoff (republishing retained state is harmless).
@shared_task(acks_late=True, autoretry_for=(MqttUnavailable, OSError), retry_backoff=True, max_retries=10)
def publish_device_policies(device_ids: list[str]) -> int:
    return notify.publish_device_policies(device_ids)


@shared_task(acks_late=True)
def publish_scope_policies(*, scope: str, group_id: int | None = None, device_id: str | None = None) -> int:
    """A scope changed: fan out the affected devices in chunks, one publish task each (a fleet policy
    touches every device; chunks keep each task short and spread them over the workers)."""
    ids = services.affected_device_ids(scope=scope, group_id=group_id, device_id=device_id)
    chunks = 0
    while chunk := list(islice(ids, FAN_OUT)):
        publish_device_policies.delay(chunk)
        chunks += 1
    return chunks
