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


@shared_task(acks_late=True, autoretry_for=(MqttUnavailable, OSError), retry_backoff=True, max_retries=10)
def republish_stored_policies(device_ids: list[str]) -> int:
    return notify.republish_stored(device_ids)


@shared_task(acks_late=True)
def reconcile_policies() -> int:
    """Periodic (beat): re-derive every device's effective policy and publish those that changed. It
    catches what no scope change announces: newly enrolled devices and devices moved to another group.
    Devices whose policy did not change cost a merge and a hash, and are sent nothing."""
    return publish_scope_policies(scope="fleet")


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
