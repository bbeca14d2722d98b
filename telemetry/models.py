from django.db import models


class InferenceRollup(models.Model):
    """Per device, per model version, per minute: what the console charts and the rollout gates read.

    Kept by the rollup task from raw inference records (see telemetry/rollups.py). Latency is a sparse
    log-bucket histogram (telemetry/histogram.py) so that cohorts of devices can be merged exactly.
    """

    bucket = models.DateTimeField()  # start of the minute, UTC
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, db_constraint=False, related_name="+")
    model_name = models.CharField(max_length=128)
    model_version = models.CharField(max_length=64)
    count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    cloud_count = models.PositiveIntegerField(default=0)  # inferences escalated to a cloud LLM
    confidence_sum = models.FloatField(default=0.0)
    confidence_count = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    latency_p50_ms = models.FloatField(null=True)
    latency_p95_ms = models.FloatField(null=True)
    latency_hist = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "model_name", "model_version", "bucket"], name="rollup_device_model_minute"
            ),
        ]
        indexes = [
            # Gates and per-version charts: one model version over a time window.
            models.Index(fields=["model_name", "model_version", "bucket"], name="rollup_version_bucket_idx"),
            # Device page charts: one device over a time window.
            models.Index(fields=["device", "bucket"], name="rollup_device_bucket_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.model_name}@{self.model_version} {self.bucket:%Y-%m-%d %H:%M}"


# Every column of an inference record, in the order the ingest worker COPYs them and the API shows them.
INFERENCE_RECORD_COLUMNS = [
    "device_id",
    "seq",
    "idx",
    "ts",
    "received_at",
    "task",
    "model_name",
    "model_version",
    "latency_ms",
    "confidence",
    "label",
    "route",
    "cloud_model",
    "tokens_in",
    "tokens_out",
    "error",
]


class InferenceRecord(models.Model):
    """One inference a device reported (one element of a telemetry message's ``records``).

    On PostgreSQL the table is range-partitioned by ``ts`` per day (telemetry/partitions.py), so
    retention drops whole partitions. The primary key is the idempotency key (device, seq, idx) plus the
    partition key ``ts`` (PostgreSQL requires it in every unique constraint of a partitioned table); a
    redelivered message carries the same ``ts``, so it still hits the same key and is stored once.
    """

    pk = models.CompositePrimaryKey("device_id", "seq", "idx", "ts")
    device_id = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    idx = models.SmallIntegerField()  # position in the message's records
    ts = models.DateTimeField()  # the device's clock at the inference
    received_at = models.DateTimeField()
    task = models.CharField(max_length=64)
    model_name = models.CharField(max_length=128)
    model_version = models.CharField(max_length=64)
    latency_ms = models.FloatField()
    confidence = models.FloatField(null=True)
    label = models.CharField(max_length=128, null=True)  # noqa: DJ001 - null: the device reported none
    route = models.CharField(max_length=8)  # local / cloud / denied
    cloud_model = models.CharField(max_length=128, null=True)  # noqa: DJ001
    tokens_in = models.IntegerField(default=0)
    tokens_out = models.IntegerField(default=0)
    error = models.CharField(max_length=64, null=True)  # noqa: DJ001 - null: no error

    class Meta:
        indexes = [
            # Per-device recent records (API) and the rollup task's per-device minute reads.
            models.Index(fields=["device_id", "ts"], name="inference_device_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.seq}.{self.idx}"


# Every column of a heartbeat row, in the order the ingest worker COPYs them and the API shows them.
HEARTBEAT_COLUMNS = [
    "device_id",
    "seq",
    "ts",
    "received_at",
    "cpu_pct",
    "mem_pct",
    "disk_pct",
    "temp_c",
    "models_running",
    "buffer_depth",
    "dropped",
    "agent_version",
]


class Heartbeat(models.Model):
    """A device's periodic resource report; partitioned by ``ts`` like InferenceRecord."""

    pk = models.CompositePrimaryKey("device_id", "seq", "ts")
    device_id = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    received_at = models.DateTimeField()
    cpu_pct = models.FloatField()
    mem_pct = models.FloatField()
    disk_pct = models.FloatField()
    temp_c = models.FloatField(null=True)
    models_running = models.JSONField(default=list)  # [{"name", "version", "slot"}]
    buffer_depth = models.BigIntegerField()
    dropped = models.BigIntegerField()
    agent_version = models.CharField(max_length=64)

    class Meta:
        indexes = [models.Index(fields=["device_id", "ts"], name="heartbeat_device_ts_idx")]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.seq}"


class DevicePresence(models.Model):
    """The newest ``status`` message applied per device, so that presence follows message order, not
    arrival order (a redelivered old ``offline`` must not flip a device that has since said ``online``).

    ``before_seq`` is the sequence number that was current when the present ``online`` was applied: the
    device's will (its ``offline`` LWT) reserves its seq just before the ``online`` of the same connection,
    so an ``offline`` with before_seq < seq < status_seq is that connection's will and applies.
    """

    device_id = models.CharField(max_length=64, primary_key=True)
    status_seq = models.BigIntegerField()
    before_seq = models.BigIntegerField(default=0)
    online = models.BooleanField()
    status_ts = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.device_id} {'online' if self.online else 'offline'} #{self.status_seq}"


class PresenceCause(models.TextChoices):
    CONNECT = "connect", "Connected"
    DISCONNECT = "disconnect", "Disconnected cleanly"
    WILL = "will", "Connection lost (last will)"
    REVOKED = "revoked", "Revoked by an operator"


class PresenceEvent(models.Model):
    """One applied presence change of a device: its history, next to ``DevicePresence`` (its present).

    Written by the status sink, in the same transaction and under the same presence row lock that applies
    the message, so a redelivered or stale status (which changes nothing) records nothing and two ingest
    workers cannot record the same transition twice; and by ``presence_revoke`` when an operator revokes
    a device that was online (nothing the device sends afterwards is stored).

    ``at`` is when the change happened: the device's ``ts`` for what it published itself (``online``, a
    clean ``offline``), but the arrival time for its last will, whose body (and ``ts``) the agent built
    when it connected and the broker publishes only when it notices the connection is gone.
    """

    device_id = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    online = models.BooleanField()
    cause = models.CharField(max_length=16, choices=PresenceCause.choices)
    at = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            # A device's page and GET /api/v1/devices/{id}/presence/ read its newest transitions.
            models.Index(fields=["device_id", "-at"], name="presence_device_at_idx"),
            # Retention deletes by age across devices.
            models.Index(fields=["at"], name="presence_at_idx"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.device_id} {'online' if self.online else 'offline'} ({self.cause}) at {self.at:%Y-%m-%d %H:%M:%S}"
        )


class DeadLetter(models.Model):
    """A message the worker could not store, kept verbatim with the reason (never silently dropped)."""

    received_at = models.DateTimeField()
    topic = models.CharField(max_length=512)
    device_id = models.CharField(max_length=64, null=True)  # noqa: DJ001 - null: the topic names no device
    reason = models.CharField(max_length=64)
    detail = models.TextField(blank=True, default="")
    payload = models.BinaryField()

    class Meta:
        indexes = [
            # The API lists dead letters newest first, optionally for one reason or one device.
            models.Index(fields=["reason", "received_at"], name="deadletter_reason_idx"),
            models.Index(fields=["device_id", "received_at"], name="deadletter_device_idx"),
            models.Index(fields=["received_at"], name="deadletter_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.reason}"


class IngestCounter(models.Model):
    """Monotonic counters of the ingest workers (Prometheus counters), summed over every worker process.

    Each worker adds its batch's increments inside the batch transaction, so a counter never counts a
    batch that rolled back. Keys look like ``messages_in`` or ``dead_letters{reason=invalid_json}``.
    """

    name = models.CharField(max_length=128, primary_key=True)
    value = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class RollupDirtyMinute(models.Model):
    """(device, minute) pairs that received inference records since the rollup task last ran.

    The worker marks them in the batch transaction; the rollup task claims and recomputes them. This makes
    rollups incremental and folds in late data (a record buffered on the device for hours marks its old
    minute dirty), while recomputing a minute from raw rows keeps them idempotent.
    """

    pk = models.CompositePrimaryKey("device_id", "minute")
    device_id = models.CharField(max_length=64)
    minute = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.device_id} {self.minute:%Y-%m-%d %H:%M}"
