from collections import defaultdict

from django.db.models import Prefetch, QuerySet

from devices.models import Device, DeviceCertificate


def device_list() -> QuerySet[Device]:
    """Devices with their group, for lists. Tags are attached per page with ``with_tag_names``."""
    return Device.objects.select_related("group")


def with_tag_names(devices: list[Device]) -> list[Device]:
    """Set ``tag_names`` (sorted) on each device of a page, in one query.

    Not ``prefetch_related("tags")``: for a many-to-many, Django builds a related manager and clones a
    queryset per device, which cost more CPU than everything else in a 100-device page
    (docs/performance.md). One query on the through table does the same work.
    """
    names: dict[str, list[str]] = defaultdict(list)
    rows = (
        Device.tags.through.objects.filter(device_id__in=[device.pk for device in devices])
        .order_by("tag__name")
        .values_list("device_id", "tag__name")
    )
    for device_id, name in rows:
        names[device_id].append(name)
    for device in devices:
        device.tag_names = names.get(device.pk, [])
    return devices


def device_detail() -> QuerySet[Device]:
    current_certs = DeviceCertificate.objects.filter(revoked_at__isnull=True).order_by("-not_after")
    return device_list().prefetch_related(
        "tags", Prefetch("certificates", queryset=current_certs, to_attr="valid_certificates")
    )
