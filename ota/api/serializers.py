from rest_framework import serializers

from fleet.api.fields import StorableJSONField
from ota.models import Artifact, OnFailure, Rollout, RolloutDevice


class ArtifactSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Artifact
        fields = [
            "id",
            "name",
            "version",
            "runtime",
            "hardware_classes",
            "release_counter",
            "filename",
            "target_path",
            "length",
            "sha256",
            "self_test_input",
            "self_test_expected",
            "uploaded_by",
            "created_at",
            "revoked_at",
            "revoke_reason",
        ]
        read_only_fields = fields


# The input of ota.services.artifact_upload: its validated data is the service's keyword arguments (the API
# and the console pass it on as it is). A comment, not a docstring: that would become the OpenAPI text.
class ArtifactUploadSerializer(serializers.Serializer):
    file = serializers.FileField(source="upload")
    name = serializers.RegexField(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
    version = serializers.RegexField(r"^[a-zA-Z0-9][a-zA-Z0-9.+_-]{0,63}$")
    runtime = serializers.RegexField(r"^[a-z0-9][a-z0-9._-]{0,63}$")
    hardware_classes = serializers.ListField(
        child=serializers.RegexField(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"), min_length=1, max_length=100
    )
    self_test_input = StorableJSONField(required=False, allow_null=True, default=None)
    self_test_expected = StorableJSONField(required=False, allow_null=True, default=None)


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class SelectorSerializer(serializers.Serializer):
    groups = serializers.ListField(
        child=serializers.SlugField(max_length=100), required=False, default=list, max_length=100
    )
    tags = serializers.ListField(
        child=serializers.SlugField(max_length=64), required=False, default=list, max_length=100
    )
    hardware_classes = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=100
    )


class GateSerializer(serializers.Serializer):
    threshold = serializers.FloatField()
    min_samples = serializers.IntegerField(min_value=1, default=1)


class StageSerializer(serializers.Serializer):
    share = serializers.FloatField(min_value=0.0001, max_value=1.0)
    soak_seconds = serializers.IntegerField(min_value=0, max_value=30 * 86400, default=0)
    gates = serializers.DictField(child=GateSerializer(), required=False, default=dict)


class RolloutInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    artifact = serializers.PrimaryKeyRelatedField(queryset=Artifact.objects.all())
    selector = SelectorSerializer(required=False, default=dict)
    stages = StageSerializer(many=True, min_length=1, max_length=20)
    on_failure = serializers.ChoiceField(choices=OnFailure.choices, default=OnFailure.PAUSE)
    window_start_hour = serializers.IntegerField(
        min_value=0, max_value=23, required=False, allow_null=True, default=None
    )
    window_end_hour = serializers.IntegerField(min_value=0, max_value=24, required=False, allow_null=True, default=None)
    gate_window_seconds = serializers.IntegerField(min_value=60, max_value=86400, default=900)
    device_timeout_seconds = serializers.IntegerField(min_value=60, max_value=30 * 86400, default=3600)
    max_retries = serializers.IntegerField(min_value=0, max_value=20, default=2)
    retry_backoff_seconds = serializers.IntegerField(min_value=1, max_value=86400, default=300)


class DryRunInputSerializer(serializers.Serializer):
    artifact = serializers.PrimaryKeyRelatedField(queryset=Artifact.objects.all())
    selector = SelectorSerializer(required=False, default=dict)
    stages = StageSerializer(many=True, min_length=1, max_length=20)


class DryRunOutputSerializer(serializers.Serializer):
    targeted = serializers.IntegerField()
    busy = serializers.IntegerField()
    per_stage = serializers.ListField(child=serializers.IntegerField())
    untargeted = serializers.IntegerField()


class RolloutSerializer(serializers.ModelSerializer):
    artifact = ArtifactSerializer(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Rollout
        fields = [
            "id",
            "name",
            "artifact",
            "selector",
            "stages",
            "on_failure",
            "window_start_hour",
            "window_end_hour",
            "gate_window_seconds",
            "device_timeout_seconds",
            "max_retries",
            "retry_backoff_seconds",
            "state",
            "current_stage",
            "stage_started_at",
            "last_decision",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class RolloutDeviceSerializer(serializers.ModelSerializer):
    class Meta:
        model = RolloutDevice
        fields = [
            "id",
            "device",
            "stage",
            "bucket",
            "state",
            "reason",
            "attempts",
            "assigned_at",
            "deadline_at",
            "last_status_at",
        ]
        read_only_fields = fields


class RollbackInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="manual")


class KeyRotateInputSerializer(serializers.Serializer):
    repository = serializers.ChoiceField(choices=["image", "director"])
    role = serializers.ChoiceField(choices=["targets", "snapshot", "timestamp", "director", "root"])


class SigningKeyOutputSerializer(serializers.Serializer):
    repository = serializers.CharField()
    role = serializers.CharField()
    keyid = serializers.CharField()
    online = serializers.BooleanField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    retired_at = serializers.DateTimeField(allow_null=True)


class UpdateTrustSerializer(serializers.Serializer):
    image_root = serializers.CharField(help_text="The image repository's root metadata (JSON text).")
    director_root = serializers.CharField(help_text="The director's root metadata (JSON text).")
    image_url = serializers.CharField()
    director_url = serializers.CharField()
