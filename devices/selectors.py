from django.db.models import Prefetch, QuerySet

from devices.models import Device, DeviceCertificate


def device_list() -> QuerySet[Device]:
    """Devices with what a list shows, in a fixed number of queries per page."""
    return Device.objects.select_related("group").prefetch_related("tags")


def device_detail() -> QuerySet[Device]:
    current_certs = DeviceCertificate.objects.filter(revoked_at__isnull=True).order_by("-not_after")
    return device_list().prefetch_related(
        Prefetch("certificates", queryset=current_certs, to_attr="valid_certificates")
    )
