import datetime as dt

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device
from fleet.api.pagination import IdCursorPagination
from fleet.errors import ApiError
from telemetry import selectors
from telemetry.api import serializers as s

DEFAULT_WINDOW = dt.timedelta(hours=1)
MAX_WINDOW = dt.timedelta(days=31)


def _device_or_404(device_id: str) -> Device:
    device = Device.objects.filter(pk=device_id).first()
    if device is None:
        raise ApiError("device_not_found", f"No device {device_id!r}.", status_code=404)
    return device


def _query(serializer_class, request) -> dict:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


class DeviceRecordsView(APIView):
    """A device's most recent inference records (newest first), optionally within [since, until)."""

    @extend_schema(parameters=[s.WindowQuerySerializer], responses=s.InferenceRecordSerializer(many=True))
    def get(self, request, device_id: str):
        _device_or_404(device_id)
        q = _query(s.WindowQuerySerializer, request)
        rows = selectors.device_records(
            device_id=device_id, since=q.get("since"), until=q.get("until"), limit=q["limit"]
        )
        return Response({"results": s.InferenceRecordSerializer(rows, many=True).data})


class DeviceHeartbeatsView(APIView):
    """A device's most recent heartbeats (newest first), optionally within [since, until)."""

    @extend_schema(parameters=[s.WindowQuerySerializer], responses=s.HeartbeatSerializer(many=True))
    def get(self, request, device_id: str):
        _device_or_404(device_id)
        q = _query(s.WindowQuerySerializer, request)
        rows = selectors.device_heartbeats(
            device_id=device_id, since=q.get("since"), until=q.get("until"), limit=q["limit"]
        )
        return Response({"results": s.HeartbeatSerializer(rows, many=True).data})


class DevicePresenceView(APIView):
    """A device's presence history: its newest connects and disconnects (newest first), with the cause
    (connect, clean disconnect, connection lost: the broker published its last will, or revoked by an
    operator while online)."""

    @extend_schema(parameters=[s.PresenceQuerySerializer], responses=s.PresenceEventSerializer(many=True))
    def get(self, request, device_id: str):
        _device_or_404(device_id)
        q = _query(s.PresenceQuerySerializer, request)
        rows = selectors.device_presence_history(device_id=device_id, limit=q["limit"])
        return Response({"results": s.PresenceEventSerializer(rows, many=True).data})


class ModelVersionAggregatesView(APIView):
    """Per model version over a window (default: the last hour), from the per-minute rollups."""

    @extend_schema(parameters=[s.AggregateQuerySerializer], responses=s.ModelVersionAggregateSerializer(many=True))
    def get(self, request):
        q = _query(s.AggregateQuerySerializer, request)
        until = q.get("until") or timezone.now()
        since = q.get("since") or until - DEFAULT_WINDOW
        if until - since > MAX_WINDOW:
            raise ApiError("window_too_large", "The window may span at most 31 days.", field="since")
        rows = selectors.model_version_aggregates(
            since=since,
            until=until,
            model_name=q.get("model"),
            model_version=q.get("version"),
            device_ids=[q["device"]] if q.get("device") else None,
        )
        return Response(
            {
                "since": since,
                "until": until,
                "results": s.ModelVersionAggregateSerializer(rows, many=True).data,
            }
        )


class DeadLetterListView(generics.ListAPIView):
    """Messages the ingest worker could not store, newest first; filter by reason, device, since."""

    serializer_class = s.DeadLetterSerializer
    pagination_class = IdCursorPagination
    ordering = "-pk"

    @extend_schema(parameters=[s.DeadLetterQuerySerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        q = _query(s.DeadLetterQuerySerializer, self.request)
        return selectors.dead_letters(reason=q.get("reason"), device_id=q.get("device"), since=q.get("since"))


class IngestCountersView(APIView):
    """The ingest workers' counters summed over every worker, and the invariant that must stay 0."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        counters = selectors.ingest_counters()
        return Response({"counters": counters, "acknowledged_unwritten": selectors.acknowledged_unwritten(counters)})


_HELP = {
    "messages_in": ("fleet_ingest_messages_total", "MQTT messages in committed batches", "counter"),
    "messages_stored": ("fleet_ingest_messages_stored_total", "Messages accepted by a sink", "counter"),
    "messages_acked": ("fleet_ingest_messages_acked_total", "Messages acknowledged to the broker", "counter"),
    "rows_written": ("fleet_ingest_rows_written_total", "Rows inserted (redeliveries excluded)", "counter"),
    "dead_letters": ("fleet_ingest_dead_letters_total", "Messages dead-lettered, by reason", "counter"),
    "batches": ("fleet_ingest_batch_seconds_count", "Committed batches", "counter"),
    "batch_seconds_sum": ("fleet_ingest_batch_seconds_sum", "Seconds spent storing committed batches", "counter"),
}


def prometheus_text(counters: dict[str, float]) -> str:
    by_metric: dict[str, list[str]] = {}
    for key, value in sorted(counters.items()):
        base, _, labels = key.partition("{")
        if base not in _HELP:
            continue
        name = _HELP[base][0]
        by_metric.setdefault(base, []).append(f"{name}{{{labels} {value:g}" if labels else f"{name} {value:g}")
    lines = []
    for base, (name, text, kind) in _HELP.items():
        samples = by_metric.get(base) or ([] if base in {"rows_written", "dead_letters"} else [f"{name} 0"])
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]
    unwritten = selectors.acknowledged_unwritten(counters)
    lines += [
        "# HELP fleet_ingest_acknowledged_unwritten Messages acknowledged beyond those committed (must be 0)",
        "# TYPE fleet_ingest_acknowledged_unwritten gauge",
        f"fleet_ingest_acknowledged_unwritten {unwritten:g}",
    ]
    return "\n".join(lines) + "\n"


class MetricsView(APIView):
    """Prometheus text exposition of the ingest counters (viewer token or console session)."""

    @extend_schema(exclude=True)
    def get(self, request):
        return HttpResponse(
            prometheus_text(selectors.ingest_counters()), content_type="text/plain; version=0.0.4; charset=utf-8"
        )
