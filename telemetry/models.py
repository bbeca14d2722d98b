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
