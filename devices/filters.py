import django_filters
from django.db.models import Subquery

from devices.models import Device, DeviceGroup, DeviceStatus, Tag
from fleet.api.fields import UtcIsoDateTimeFilter


class DeviceFilterSet(django_filters.FilterSet):
    """Used by the API list and the console list alike."""

    group = django_filters.CharFilter(method="filter_group")
    tag = django_filters.CharFilter(method="filter_tag")
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices)
    hardware_class = django_filters.CharFilter()
    runtime = django_filters.CharFilter()
    online = django_filters.BooleanFilter()
    last_seen_after = UtcIsoDateTimeFilter(field_name="last_seen_at", lookup_expr="gte")
    last_seen_before = UtcIsoDateTimeFilter(field_name="last_seen_at", lookup_expr="lt")
    id_prefix = django_filters.CharFilter(field_name="id", lookup_expr="startswith")

    # Group and tag are matched by id through a scalar subquery rather than by joining on the name: the
    # planner then knows the one id up front and reads the (group_id, id) or (tag_id, device_id) index
    # in id order, so a page costs the same for a group of ten devices as for one of half a million.
    # A join on the name makes it walk the whole device list in id order and filter, which for a rare
    # group or tag reads most of the table (see docs/performance.md).

    def filter_group(self, queryset, name, value):
        return queryset.filter(group_id=Subquery(DeviceGroup.objects.filter(name=value).values("id")[:1]))

    def filter_tag(self, queryset, name, value):
        return queryset.filter(tags__id=Subquery(Tag.objects.filter(name=value).values("id")[:1]))

    class Meta:
        model = Device
        fields = ["group", "tag", "status", "hardware_class", "runtime", "online"]
