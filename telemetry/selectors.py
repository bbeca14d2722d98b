"""Reads of telemetry used by the API, the metrics endpoint and (later) the console and rollout gates."""

import datetime as dt
from collections import defaultdict

from telemetry import histogram
from telemetry.models import DeadLetter, Heartbeat, InferenceRecord, InferenceRollup, IngestCounter, PresenceEvent


def device_records(*, device_id: str, since: dt.datetime | None, until: dt.datetime | None, limit: int):
    rows = InferenceRecord.objects.filter(device_id=device_id)
    if since:
        rows = rows.filter(ts__gte=since)
    if until:
        rows = rows.filter(ts__lt=until)
    return list(rows.order_by("-ts", "-seq", "-idx")[:limit])


def device_heartbeats(*, device_id: str, since: dt.datetime | None, until: dt.datetime | None, limit: int):
    rows = Heartbeat.objects.filter(device_id=device_id)
    if since:
        rows = rows.filter(ts__gte=since)
    if until:
        rows = rows.filter(ts__lt=until)
    return list(rows.order_by("-ts", "-seq")[:limit])


def device_presence_history(*, device_id: str, limit: int = 20) -> list:
    """A device's newest presence transitions, newest first (an index range scan on (device_id, -at))."""
    return list(PresenceEvent.objects.filter(device_id=device_id).order_by("-at", "-seq")[:limit])


def model_version_aggregates(
    *,
    since: dt.datetime,
    until: dt.datetime,
    model_name: str | None = None,
    model_version: str | None = None,
    device_ids: list[str] | None = None,
) -> list[dict]:
    """Per (model, version) over [since, until), merged from per-minute rollups (never raw rows):
    counts, error rate, latency p50/p95 from the merged histograms, mean confidence, cloud share."""
    rollups = InferenceRollup.objects.filter(bucket__gte=since, bucket__lt=until)
    if model_name:
        rollups = rollups.filter(model_name=model_name)
    if model_version:
        rollups = rollups.filter(model_version=model_version)
    if device_ids is not None:
        rollups = rollups.filter(device_id__in=device_ids)
    merged: dict[tuple, dict] = defaultdict(
        lambda: {"count": 0, "errors": 0, "cloud": 0, "conf_sum": 0.0, "conf_n": 0, "lat_sum": 0.0, "hist": {}}
    )
    devices: dict[tuple, set] = defaultdict(set)
    for r in rollups.only(
        "device_id",
        "model_name",
        "model_version",
        "count",
        "error_count",
        "cloud_count",
        "confidence_sum",
        "confidence_count",
        "latency_sum_ms",
        "latency_hist",
    ).iterator(chunk_size=5000):
        key = (r.model_name, r.model_version)
        m = merged[key]
        m["count"] += r.count
        m["errors"] += r.error_count
        m["cloud"] += r.cloud_count
        m["conf_sum"] += r.confidence_sum
        m["conf_n"] += r.confidence_count
        m["lat_sum"] += r.latency_sum_ms
        histogram.merge(m["hist"], r.latency_hist)
        devices[key].add(r.device_id)
    out = []
    for (name, version), m in sorted(merged.items()):
        out.append(
            {
                "model_name": name,
                "model_version": version,
                "devices": len(devices[(name, version)]),
                "count": m["count"],
                "error_count": m["errors"],
                "error_rate": m["errors"] / m["count"] if m["count"] else None,
                "latency_mean_ms": m["lat_sum"] / m["count"] if m["count"] else None,
                "latency_p50_ms": histogram.quantile(m["hist"], 0.5),
                "latency_p95_ms": histogram.quantile(m["hist"], 0.95),
                "confidence_mean": m["conf_sum"] / m["conf_n"] if m["conf_n"] else None,
                "cloud_share": m["cloud"] / m["count"] if m["count"] else None,
            }
        )
    return out


def dead_letters(*, reason: str | None = None, device_id: str | None = None, since: dt.datetime | None = None):
    rows = DeadLetter.objects.all()
    if reason:
        rows = rows.filter(reason=reason)
    if device_id:
        rows = rows.filter(device_id=device_id)
    if since:
        rows = rows.filter(received_at__gte=since)
    return rows


def ingest_counters() -> dict[str, float]:
    return dict(IngestCounter.objects.order_by("name").values_list("name", "value"))


def acknowledged_unwritten(counters: dict[str, float]) -> float:
    """Messages acknowledged to the broker beyond those committed: must stay 0.

    Every committed batch adds its messages to messages_in (stored, redelivered or dead-lettered) in the
    same transaction; acks are counted after the commit. More acks than committed messages would mean a
    message was acknowledged without being written.
    """
    return max(0.0, counters.get("messages_acked", 0) - counters.get("messages_in", 0))
