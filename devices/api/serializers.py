import datetime as dt

from rest_framework import serializers

from devices.models import Device, DeviceGroup, EnrollmentToken
from fleet.api.fields import NameRelatedField, UtcDateTimeField
from fleet_agent.protocol import DEVICE_ID_PATTERN
from ota.api.serializers import UpdateTrustSerializer


def tag_list() -> serializers.ListField:
    return serializers.ListField(child=serializers.SlugField(max_length=64), required=False, max_length=100)


class DeviceGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeviceGroup
        fields = ["name", "description", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"name": {"validators": []}}  # uniqueness is the service's 409, not a 400


class CertificateSummarySerializer(serializers.Serializer):
    serial = serializers.CharField()
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()


def _iso_utc(value: dt.datetime | None) -> str | None:
    """What DRF's DateTimeField renders (ISO 8601 in UTC, "Z"), without building a field per value."""
    if value is None:
        return None
    text = value.astimezone(dt.UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _tag_names(device: Device) -> list[str]:
    names = getattr(device, "tag_names", None)  # set on list pages by selectors.with_tag_names
    return names if names is not None else [tag.name for tag in device.tags.all()]


class DeviceSerializer(serializers.ModelSerializer):
    """The device in lists. The fields below define the schema; ``to_representation`` renders them
    directly because the generic per-field path cost ~0.1 ms per device, most of a 100-device page's
    CPU time (docs/performance.md). tests/devices/test_device_serializer.py holds the two equal."""

    group = serializers.SlugRelatedField(slug_field="name", read_only=True)
    tags = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    def to_representation(self, device: Device) -> dict:
        return {
            "id": device.id,
            "name": device.name,
            "group": device.group.name if device.group_id else None,
            "tags": _tag_names(device),
            "hardware_class": device.hardware_class,
            "runtime": device.runtime,
            "agent_version": device.agent_version,
            "status": device.status,
            "online": device.online,
            "last_seen_at": _iso_utc(device.last_seen_at),
            "created_at": _iso_utc(device.created_at),
        }

    def generic_representation(self, device: Device) -> dict:
        """DRF's own rendering of the declared fields (the reference the fast path is tested against)."""
        return super().to_representation(device)

    class Meta:
        model = Device
        fields = [
            "id",
            "name",
            "group",
            "tags",
            "hardware_class",
            "runtime",
            "agent_version",
            "status",
            "online",
            "last_seen_at",
            "created_at",
        ]
        read_only_fields = fields


class DeviceDetailSerializer(DeviceSerializer):
    certificate = serializers.SerializerMethodField()

    def to_representation(self, device: Device) -> dict:
        return super().to_representation(device) | {"certificate": self.get_certificate(device)}

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "certificate"]
        read_only_fields = fields

    def get_certificate(self, device) -> dict | None:
        certs = getattr(device, "valid_certificates", None)
        if not certs:
            return None
        return CertificateSummarySerializer(certs[0]).data


class DeviceUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    group = NameRelatedField(slug_field="name", queryset=DeviceGroup.objects.all(), required=False, allow_null=True)
    tags = tag_list()


class DeviceBulkUpdateSerializer(serializers.Serializer):
    device_ids = serializers.ListField(
        child=serializers.RegexField(rf"^{DEVICE_ID_PATTERN}$"), min_length=1, max_length=10_000
    )
    add_tags = tag_list()
    remove_tags = tag_list()
    group = NameRelatedField(slug_field="name", queryset=DeviceGroup.objects.all(), required=False, allow_null=True)


class DeviceRevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    group = serializers.SlugRelatedField(slug_field="name", read_only=True)
    tags = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = [
            "id",
            "name",
            "prefix",
            "group",
            "tags",
            "max_uses",
            "uses",
            "expires_at",
            "auto_accept",
            "revoked_at",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class EnrollmentTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    group = NameRelatedField(slug_field="name", queryset=DeviceGroup.objects.all(), required=False, allow_null=True)
    tags = tag_list()
    max_uses = serializers.IntegerField(min_value=1, max_value=10_000_000, default=1)
    expires_at = UtcDateTimeField(required=False, allow_null=True)
    auto_accept = serializers.BooleanField(default=True)


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    token = serializers.CharField(help_text="The secret, shown this once only.")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class EnrollInputSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    csr = serializers.CharField(max_length=16 * 1024, help_text="PEM CSR; its CN is the requested device id.")
    device_id = serializers.CharField(max_length=63, required=False, allow_blank=True, default="")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    hardware_class = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    runtime = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    agent_version = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")


class EnrollOutputSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    status = serializers.CharField()
    device_token = serializers.CharField(help_text="The device's HTTP credential (Authorization: Device <token>).")
    certificate = serializers.CharField(allow_null=True, help_text="PEM; null while pending approval.")
    ca_chain = serializers.CharField()
    mqtt_url = serializers.CharField()
    api_url = serializers.CharField()
    update_trust = UpdateTrustSerializer()
    policy_public_key = serializers.CharField(help_text="PEM Ed25519 key that signs the device's LLM policy.")


class CertificateRenewInputSerializer(serializers.Serializer):
    csr = serializers.CharField(max_length=16 * 1024)


class DeviceCredentialsOutputSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    status = serializers.CharField()
    certificate = serializers.CharField(allow_null=True)
    ca_chain = serializers.CharField()
    mqtt_url = serializers.CharField()
