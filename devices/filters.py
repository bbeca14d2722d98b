import django_filters

from devices.models import Device, DeviceStatus
from fleet.api.fields import UtcIsoDateTimeFilter


class DeviceFilterSet(django_filters.FilterSet):
    """Used by the API list and the console list alike."""

    group = django_filters.CharFilter(field_name="group__name")
    tag = django_filters.CharFilter(field_name="tags__name")
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices)
    hardware_class = django_filters.CharFilter()
    runtime = django_filters.CharFilter()
    online = django_filters.BooleanFilter()
    last_seen_after = UtcIsoDateTimeFilter(field_name="last_seen_at", lookup_expr="gte")
    last_seen_before = UtcIsoDateTimeFilter(field_name="last_seen_at", lookup_expr="lt")
    id_prefix = django_filters.CharFilter(field_name="id", lookup_expr="startswith")

    class Meta:
        model = Device
        fields = ["group", "tag", "status", "hardware_class", "runtime", "online"]
