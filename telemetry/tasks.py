"""Periodic telemetry work, run by Celery beat (schedule in fleet/settings.py CELERY_BEAT_SCHEDULE)."""

from celery import shared_task

from telemetry import services


@shared_task(name="telemetry.rollups_update")
def rollups_update() -> int:
    """Fold the minutes that got records since the last run into InferenceRollup."""
    total = 0
    while True:  # drain the backlog in bounded transactions
        written = services.rollups_update()
        total += written
        if not written:
            return total


@shared_task(name="telemetry.partitions_maintain")
def partitions_maintain() -> list[str]:
    return services.partitions_maintain()


@shared_task(name="telemetry.retention_apply")
def retention_apply() -> dict[str, int]:
    return services.retention_apply()
