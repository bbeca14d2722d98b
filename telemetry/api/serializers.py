import base64

from rest_framework import serializers

from telemetry.models import (
    HEARTBEAT_COLUMNS,
    INFERENCE_RECORD_COLUMNS,
    DeadLetter,
    Heartbeat,
    InferenceRecord,
    PresenceEvent,
)


class WindowQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": "until must be after since."}, code="invalid_window")
        return attrs


class AggregateQuerySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    model = serializers.CharField(required=False, max_length=128)
    version = serializers.CharField(required=False, max_length=64)
    device = serializers.CharField(required=False, max_length=64)

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": "until must be after since."}, code="invalid_window")
        return attrs


class DeadLetterQuerySerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, max_length=64)
    device = serializers.CharField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)


class PresenceQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=50)


class PresenceEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = PresenceEvent
        fields = ["at", "online", "cause", "seq", "received_at"]
        read_only_fields = fields


class InferenceRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = InferenceRecord
        fields = INFERENCE_RECORD_COLUMNS


class HeartbeatSerializer(serializers.ModelSerializer):
    class Meta:
        model = Heartbeat
        fields = HEARTBEAT_COLUMNS


class ModelVersionAggregateSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    model_version = serializers.CharField()
    devices = serializers.IntegerField()
    count = serializers.IntegerField()
    error_count = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    latency_mean_ms = serializers.FloatField(allow_null=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    confidence_mean = serializers.FloatField(allow_null=True)
    cloud_share = serializers.FloatField(allow_null=True)


class DeadLetterSerializer(serializers.ModelSerializer):
    payload_base64 = serializers.SerializerMethodField()
    payload_text = serializers.SerializerMethodField()

    class Meta:
        model = DeadLetter
        fields = ["id", "received_at", "topic", "device_id", "reason", "detail", "payload_base64", "payload_text"]

    def get_payload_base64(self, obj) -> str:
        return base64.b64encode(bytes(obj.payload)).decode()

    def get_payload_text(self, obj) -> str:
        """The first 2,000 characters, undecodable bytes replaced: for reading, not for replay."""
        return bytes(obj.payload)[:2000].decode("utf-8", errors="replace")
