"""Reads shared by the API, the enrollment response, the gates and the repository views."""

import datetime as dt

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tuf.api.metadata import Metadata, Targets

from devices.models import Device, DeviceStatus
from fleet.models import AuditEvent
from ota.cohorts import BUCKETS, reached_filter_limit
from ota.gates import Metrics
from ota.models import FAILED_STATES, Artifact, Repository, RepositoryMetadata, Rollout, RolloutDevice, UpdateState
from telemetry import histogram
from telemetry.models import InferenceRollup


def repository_urls() -> dict[str, str]:
    base = settings.PUBLIC_URL
    return {"image_url": f"{base}/ota/image/", "director_url": f"{base}/ota/director/"}


def _current_roots() -> tuple[bytes | None, bytes | None]:
    """The newest signed root of the image repository and of the director, in one query.

    Plain SQL because enrollment (the hot path, docs/performance.md) reads both roots on every
    request: two ORM reads and an initialisation count cost about 0.9 ms of CPU, this one statement
    about 0.07 ms. Each scalar subquery is a backward scan of the (repository, role, version) unique
    index; the SQL runs on PostgreSQL and on the SQLite of the embedded run.
    """
    table = RepositoryMetadata._meta.db_table
    newest = (
        f"(SELECT content FROM {table} WHERE repository = %s AND role = 'root' "  # noqa: S608 - table name from the model
        "ORDER BY version DESC LIMIT 1)"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {newest}, {newest}", [Repository.IMAGE, Repository.DIRECTOR])
        image, director = cursor.fetchone()
    return (None if image is None else bytes(image)), (None if director is None else bytes(director))


def update_trust_bootstrap() -> dict:
    """What a device needs to verify updates, returned at enrollment: both trusted roots (the exact
    signed JSON text, version 1 or newer; the agent chains to the newest itself) and both URLs."""
    image, director = _current_roots()
    if image is None or director is None:
        # First use in the embedded run: initialise both repositories, then read their roots.
        from ota.services import repositories_ensure

        repositories_ensure()
        image, director = _current_roots()
    return {
        "image_root": image.decode("utf-8"),
        "director_root": director.decode("utf-8"),
        **repository_urls(),
    }


_DIRECTOR_COLUMNS = {"timestamp": "timestamp_json", "snapshot": "snapshot_json", "targets": "targets_json"}


def director_cached(*, token_hash: str, role: str) -> tuple[str, str, tuple | None] | None:
    """The director's hot path in one query, without the ORM: (device id, device status, (signed file,
    version, dirty, expires_at) or None) for a device token hash, or None for an unknown token."""
    column = _DIRECTOR_COLUMNS[role]  # from a fixed map, never from the request
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT d.id, d.status, ds.{column}, ds.version, ds.dirty, ds.expires_at FROM devices_device d"  # noqa: S608
            " LEFT JOIN ota_directorstate ds ON ds.device_id = d.id WHERE d.token_hash = %s",
            [token_hash],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    device_id, status, content, version, dirty, expires_at = row
    if isinstance(expires_at, str):  # SQLite (the embedded run) returns datetimes as naive UTC text
        expires_at = parse_datetime(expires_at)
    if expires_at is not None and timezone.is_naive(expires_at):
        expires_at = timezone.make_aware(expires_at, dt.UTC)
    return device_id, status, (None if version is None else (content, version, bool(dirty), expires_at))


def rollout_list() -> QuerySet[Rollout]:
    return Rollout.objects.select_related("artifact", "created_by")


def artifact_list() -> QuerySet[Artifact]:
    return Artifact.objects.select_related("uploaded_by")


def targeted_devices(*, selector: dict, artifact: Artifact) -> QuerySet[Device]:
    """Active devices matching a rollout selector, narrowed to the artifact's compatible hardware
    (devices on other hardware are never targeted, whatever the selector says)."""
    devices = Device.objects.filter(status=DeviceStatus.ACTIVE)
    hardware = set(artifact.hardware_classes)
    if selector.get("hardware_classes"):
        hardware = hardware & set(selector["hardware_classes"]) if hardware else set(selector["hardware_classes"])
        devices = devices.filter(hardware_class__in=sorted(hardware))
    elif hardware:
        devices = devices.filter(hardware_class__in=sorted(hardware))
    if selector.get("groups"):
        devices = devices.filter(group__name__in=selector["groups"])
    if selector.get("tags"):
        tagged = Device.tags.through.objects.filter(device_id=OuterRef("pk"), tag__name__in=selector["tags"])
        devices = devices.filter(Exists(tagged))
    return devices


def rollout_state_counts(rollout: Rollout) -> dict[str, dict[str, int]]:
    """Per stage, how many devices are in each update state."""
    out: dict[str, dict[str, int]] = {}
    rows = RolloutDevice.objects.filter(rollout=rollout).values("stage", "state").annotate(n=Count("id"))
    for row in rows:
        key = "untargeted" if row["stage"] is None else str(row["stage"])
        out.setdefault(key, {})[row["state"]] = row["n"]
    return out


def _control_floor(rollout: Rollout) -> int:
    """Control devices are those not yet assigned whose bucket is at the top of the hash range, as many
    buckets as the cohort has (at least 1%): a sample the size of the cohort, not the whole fleet."""
    share = rollout.stages[rollout.current_stage]["share"] if rollout.current_stage >= 0 else 0.0
    width = max(round(share * BUCKETS), BUCKETS // 100)
    return max(BUCKETS - width, round(share * BUCKETS))


# One pass over the window's rollups of both cohorts (MATERIALIZED: joined once, aggregated twice):
# rows with key NULL are the totals per side, the others the merged latency histogram per side.
_METRICS_SQL = """
WITH picked AS MATERIALIZED (
    SELECT CASE WHEN rd.stage <= %(cur)s THEN 'cohort' ELSE 'control' END AS side,
           r.count, r.error_count, r.cloud_count, r.confidence_sum, r.confidence_count, r.latency_hist
    FROM ota_rolloutdevice rd
    JOIN telemetry_inferencerollup r ON r.device_id = rd.device_id
    WHERE rd.rollout_id = %(rid)s AND (rd.bucket < %(reached)s OR rd.bucket >= %(floor)s)
      AND r.model_name = %(name)s AND r.bucket >= %(start)s AND r.bucket < %(end)s
      AND ((rd.stage <= %(cur)s AND r.model_version = %(ver)s)
           OR ((rd.stage IS NULL OR rd.stage > %(cur)s) AND rd.bucket >= %(floor)s AND r.model_version <> %(ver)s))
)
SELECT side, NULL::text, sum(count)::float8, sum(error_count)::float8, sum(cloud_count)::float8,
       sum(confidence_sum)::float8, sum(confidence_count)::float8
FROM picked GROUP BY side
UNION ALL
SELECT side, h.key, sum(h.value::bigint)::float8, NULL, NULL, NULL, NULL
FROM picked CROSS JOIN LATERAL jsonb_each_text(picked.latency_hist) AS h(key, value)
GROUP BY side, h.key
"""


def _inference_totals_sql(params: dict) -> tuple[dict, dict]:
    sides: dict[str, dict] = {"cohort": {}, "control": {}}
    hists: dict[str, dict[str, int]] = {"cohort": {}, "control": {}}
    with connection.cursor() as cursor:
        cursor.execute(_METRICS_SQL, params)
        for side, key, total, errors, cloud, conf_sum, conf_count in cursor.fetchall():
            if key is not None:
                hists[side][key] = int(total)
                continue
            sides[side].update(
                inferences=int(total),
                errors=int(errors),
                cloud=int(cloud),
                confidence_sum=float(conf_sum),
                confidence_count=int(conf_count),
            )
    return sides, hists


def _inference_totals_python(rollout: Rollout, params: dict) -> tuple[dict, dict]:
    """The same sums as _METRICS_SQL, row by row in Python: for the embedded SQLite run (no jsonb)."""
    stage_of = dict(
        RolloutDevice.objects.filter(rollout=rollout)
        .filter(Q(bucket__lt=params["reached"]) | Q(bucket__gte=params["floor"]))
        .values_list("device_id", "stage")
    )
    floor_ids = set(
        RolloutDevice.objects.filter(rollout=rollout, bucket__gte=params["floor"]).values_list("device_id", flat=True)
    )
    sides: dict[str, dict] = {"cohort": {}, "control": {}}
    hists: dict[str, dict[str, int]] = {"cohort": {}, "control": {}}
    rows = InferenceRollup.objects.filter(
        device_id__in=list(stage_of),
        model_name=params["name"],
        bucket__gte=params["start"],
        bucket__lt=params["end"],
    ).values_list(
        "device_id",
        "model_version",
        "count",
        "error_count",
        "cloud_count",
        "confidence_sum",
        "confidence_count",
        "latency_hist",
    )
    for device_id, version, count, errors, cloud, conf_sum, conf_count, hist in rows:
        stage = stage_of[device_id]
        if stage is not None and stage <= params["cur"] and version == params["ver"]:
            side = "cohort"
        elif (stage is None or stage > params["cur"]) and device_id in floor_ids and version != params["ver"]:
            side = "control"
        else:
            continue
        totals = sides[side]
        for key, value in (
            ("inferences", count),
            ("errors", errors),
            ("cloud", cloud),
            ("confidence_sum", conf_sum),
            ("confidence_count", conf_count),
        ):
            totals[key] = totals.get(key, 0) + value
        histogram.merge(hists[side], hist)
    return sides, hists


def cohort_metrics(*, rollout: Rollout, now: dt.datetime) -> tuple[Metrics, Metrics]:
    """(cohort, control) metrics over the gate window of the current stage.

    Cohort: devices of the stages reached so far, rollups on the new version. Control: a same-sized
    sample of the devices not reached yet, rollups on any other version of the model. PostgreSQL merges
    the latency histograms (sum per bucket) so only one row per bucket comes back.
    """
    cur = rollout.current_stage
    start = max(rollout.stage_started_at, now - dt.timedelta(seconds=rollout.gate_window_seconds))
    params = {
        "cur": cur,
        "rid": rollout.pk,
        "name": rollout.artifact.name,
        "ver": rollout.artifact.version,
        "start": start,
        "end": now,
        "floor": _control_floor(rollout),
        "reached": reached_filter_limit([s["share"] for s in rollout.stages], cur),
    }
    if connection.vendor == "postgresql":
        sides, hists = _inference_totals_sql(params)
    else:
        sides, hists = _inference_totals_python(rollout, params)
    for side in sides:
        sides[side]["p95_ms"] = histogram.quantile(hists[side], 0.95)
    presence = RolloutDevice.objects.filter(rollout=rollout).filter(
        Q(stage__lte=cur, bucket__lt=params["reached"])
        | ((Q(stage__isnull=True) | Q(stage__gt=cur)) & Q(bucket__gte=params["floor"]))
    )
    for row in presence.values("stage").annotate(
        devices=Count("id"), offline=Count("id", filter=Q(device__online=False))
    ):
        side = "cohort" if row["stage"] is not None and row["stage"] <= cur else "control"
        sides[side]["devices"] = sides[side].get("devices", 0) + row["devices"]
        sides[side]["offline"] = sides[side].get("offline", 0) + row["offline"]
    installs = RolloutDevice.objects.filter(rollout=rollout, stage__lte=cur, bucket__lt=params["reached"]).aggregate(
        finished=Count("id", filter=Q(state=UpdateState.SUCCEEDED) | Q(state__in=FAILED_STATES)),
        failed=Count("id", filter=Q(state__in=FAILED_STATES)),
    )
    sides["cohort"].update(installs)
    return Metrics.from_dict(sides["cohort"]), Metrics.from_dict(sides["control"])


def release_signature(artifact: Artifact) -> dict | None:
    """Where a release was signed: the image repository's targets metadata that first listed it (its
    version from the release's audit event), that file's signatures, and the hashes it lists for the
    release. None when the metadata is gone (e.g. written before the audit event recorded its version)."""
    event = (
        AuditEvent.objects.filter(action="ota.release.create", object_type="artifact", object_id=str(artifact.pk))
        .only("after")
        .first()
    )
    version = (event.after or {}).get("targets_version") if event else None
    row = (
        RepositoryMetadata.objects.filter(repository=Repository.IMAGE, role="targets", version=version).first()
        if version
        else None
    )
    if row is None:
        return None
    md = Metadata[Targets].from_bytes(bytes(row.content))
    target = md.signed.targets.get(artifact.target_path)
    return {
        "targets_version": md.signed.version,
        "expires": md.signed.expires,
        "signatures": [{"keyid": keyid, "sig": sig.signature} for keyid, sig in md.signatures.items()],
        "hashes": dict(target.hashes) if target else {},
        "length": target.length if target else None,
    }
