from rest_framework import serializers

from devices.models import Device, DeviceGroup
from fleet.api.fields import KeyRelatedField, NameRelatedField, StorableJSONField
from policies.models import Policy, Scope


class PolicySerializer(serializers.ModelSerializer):
    group = serializers.SlugRelatedField(slug_field="name", read_only=True)
    device = serializers.PrimaryKeyRelatedField(read_only=True)
    updated_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Policy
        fields = ["id", "scope", "group", "device", "document", "version", "created_at", "updated_at", "updated_by"]
        read_only_fields = fields


class PolicyCreateSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=Scope.choices)
    group = NameRelatedField(
        slug_field="name", queryset=DeviceGroup.objects.all(), required=False, allow_null=True, default=None
    )
    device = KeyRelatedField(queryset=Device.objects.all(), required=False, allow_null=True, default=None)
    document = StorableJSONField(help_text="A policy document (docs/policies.md).")


class PolicyUpdateSerializer(serializers.Serializer):
    document = StorableJSONField()


class EffectivePolicySerializer(serializers.Serializer):
    device_id = serializers.CharField()
    policy = serializers.JSONField(help_text="The merged document the device enforces.")
    sources = serializers.DictField(
        child=serializers.CharField(), help_text="For every field path, the scope it came from."
    )
    published_version = serializers.IntegerField(allow_null=True)
    budgets = serializers.JSONField(help_text="Per window: limits, used, left.")


class UsageQuerySerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=["minute", "hour", "day", "month"], default="day")
    group = serializers.SlugField(required=False)


class UsageRowSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="gateway (authoritative) or device (its own reports)")
    model = serializers.CharField(required=False)
    route = serializers.CharField(required=False)
    reason = serializers.CharField(required=False)
    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    cost = serializers.FloatField()
    requests = serializers.IntegerField()


class UsageOutputSerializer(serializers.Serializer):
    window = serializers.CharField()
    since = serializers.CharField()
    cloud_by_model = UsageRowSerializer(many=True)
    decisions_by_reason = UsageRowSerializer(many=True)
    device_id = serializers.CharField(required=False)
    group = serializers.CharField(required=False, allow_null=True)
    budgets = serializers.JSONField(required=False, help_text="Per window: limits, used, left.")
