"""Model artifacts, the signed update repository (image repository + per-device director), rollouts and
per-device update state. See docs/updates.md for the trust and rollout model these rows implement."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Repository(models.TextChoices):
    IMAGE = "image", "Image repository"
    DIRECTOR = "director", "Director"


class KeyRole(models.TextChoices):
    ROOT = "root", "root"
    TARGETS = "targets", "targets"
    SNAPSHOT = "snapshot", "snapshot"
    TIMESTAMP = "timestamp", "timestamp"
    # The director signs its per-device targets, snapshot and timestamp with one online key (Uptane).
    DIRECTOR = "director", "director"


class SigningKey(models.Model):
    """One signing key of one role of one repository.

    The public key is what the root metadata lists. The private key is PKCS#8 encrypted with
    FLEET_KEY_ENCRYPTION_SECRET; a root key exported for offline keeping has no private key here
    (``encrypted_private_pem`` empty) and must be supplied to the commands that sign a new root.
    """

    repository = models.CharField(max_length=16, choices=Repository.choices)
    role = models.CharField(max_length=16, choices=KeyRole.choices)
    keyid = models.CharField(max_length=64, unique=True)
    public_key = models.JSONField()  # securesystemslib Key.to_dict()
    encrypted_private_pem = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["repository", "role", "id"]
        indexes = [models.Index(fields=["repository", "role", "active"], name="signingkey_role_idx")]

    def __str__(self) -> str:
        return f"{self.repository}/{self.role} {self.keyid[:12]}"

    @property
    def online(self) -> bool:
        return bool(self.encrypted_private_pem)


class RepositoryMetadata(models.Model):
    """Every signed metadata file of the image repository and the director's shared root, by version.

    Kept by version because clients fetch ``{version}.root.json`` (every root since theirs, for key
    rotation) and, with consistent snapshots, ``{version}.snapshot.json`` / ``{version}.targets.json``.
    Per-device director targets/snapshot/timestamp live in DirectorState instead.
    """

    repository = models.CharField(max_length=16, choices=Repository.choices)
    role = models.CharField(max_length=16)
    version = models.PositiveIntegerField()
    content = models.BinaryField()
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository", "role", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "role", "version"], name="repo_metadata_role_version"),
        ]

    def __str__(self) -> str:
        return f"{self.repository}/{self.version}.{self.role}.json"


class Artifact(models.Model):
    """An uploaded model file. Uploading signs it into the image repository (a release); revoking removes
    it from the image repository's targets so no device can verify it any more."""

    name = models.CharField(max_length=128)
    version = models.CharField(max_length=64)
    runtime = models.CharField(max_length=64)
    hardware_classes = models.JSONField(default=list)
    # Monotonic per model name: the agent refuses a lower counter unless the director signs a rollback.
    release_counter = models.PositiveIntegerField()
    filename = models.CharField(max_length=200)
    storage_path = models.CharField(max_length=500)
    length = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    self_test_input = models.JSONField(null=True, blank=True)
    self_test_expected = models.JSONField(null=True, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="artifact_name_version"),
            models.UniqueConstraint(fields=["name", "release_counter"], name="artifact_name_counter"),
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def target_path(self) -> str:
        """The TUF target path: ``{name}/{version}/{filename}``, the same in both repositories."""
        return f"{self.name}/{self.version}/{self.filename}"


class DirectorState(models.Model):
    """What the director tells one device to run, and the device's signed director metadata.

    ``version`` numbers the device's director timestamp, snapshot and targets together and only grows:
    a device that has seen version N refuses anything older (replay). The signed files are cached here
    and re-signed lazily, on the device's next fetch, when ``dirty`` or near expiry, so that a rollout
    assigning a million devices writes rows, not a million signatures.
    """

    device = models.OneToOneField("devices.Device", primary_key=True, on_delete=models.CASCADE, related_name="+")
    artifact = models.ForeignKey(Artifact, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rollback = models.BooleanField(default=False)
    rollout = models.ForeignKey("Rollout", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    version = models.PositiveIntegerField(default=0)
    dirty = models.BooleanField(default=True)
    timestamp_json = models.BinaryField(null=True)
    snapshot_json = models.BinaryField(null=True)
    targets_json = models.BinaryField(null=True)
    expires_at = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.device_id} -> {self.artifact} v{self.version}"


class RolloutState(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    ABORTED = "aborted", "Aborted"
    ROLLED_BACK = "rolled_back", "Rolled back"


class OnFailure(models.TextChoices):
    PAUSE = "pause", "Pause"
    ROLLBACK = "rollback", "Roll back"


class Rollout(models.Model):
    """One release to a selector of devices in ordered stages; see ota/rollouts.py for the rules.

    ``stages`` is a list of ``{"share": 0..1 cumulative, "soak_seconds": int, "gates": {name:
    {"threshold": float, "min_samples": int}}}``. ``selector`` is ``{"groups": [...], "tags": [...],
    "hardware_classes": [...]}`` (empty lists match everything; hardware is always narrowed to the
    artifact's compatible classes).
    """

    name = models.CharField(max_length=200)
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="rollouts")
    selector = models.JSONField(default=dict)
    stages = models.JSONField()
    on_failure = models.CharField(max_length=16, choices=OnFailure.choices, default=OnFailure.PAUSE)
    window_start_hour = models.PositiveSmallIntegerField(null=True, blank=True)  # UTC, inclusive
    window_end_hour = models.PositiveSmallIntegerField(null=True, blank=True)  # UTC, exclusive
    gate_window_seconds = models.PositiveIntegerField(default=900)
    device_timeout_seconds = models.PositiveIntegerField(default=3600)
    max_retries = models.PositiveSmallIntegerField(default=2)
    retry_backoff_seconds = models.PositiveIntegerField(default=300)
    state = models.CharField(max_length=16, choices=RolloutState.choices, default=RolloutState.DRAFT)
    current_stage = models.IntegerField(default=-1)  # -1 before start
    stage_started_at = models.DateTimeField(null=True, blank=True)
    # Control-cohort metrics of the last evaluation that had them: the baseline once no control is left.
    baseline = models.JSONField(null=True, blank=True)
    last_decision = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state"], name="rollout_state_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.artifact})"


class UpdateState(models.TextChoices):
    PENDING = "pending", "Pending (stage not reached)"
    ASSIGNED = "assigned", "Assigned"
    DOWNLOADING = "downloading", "Downloading"
    DOWNLOADED = "downloaded", "Downloaded"
    VERIFYING = "verifying", "Verifying"
    INSTALLING = "installing", "Installing"
    HEALTH_CHECKING = "health_checking", "Health-checking"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    TIMED_OUT = "timed_out", "Timed out"


IN_FLIGHT_STATES = [
    UpdateState.ASSIGNED,
    UpdateState.DOWNLOADING,
    UpdateState.DOWNLOADED,
    UpdateState.VERIFYING,
    UpdateState.INSTALLING,
    UpdateState.HEALTH_CHECKING,
]
FAILED_STATES = [UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.TIMED_OUT]


class RolloutDevice(models.Model):
    """One targeted device of one rollout: its cohort (stage) and its update state.

    ``stage`` is fixed at start from a stable hash (or, for a device that matched later, the stage
    current when it joined), so a stage's devices never change. ``active`` is true while the rollout
    runs or is paused; the partial unique constraint keeps a device in at most one such rollout, and
    so also once in its own rollout (rows are only inserted while the rollout is live, all active).
    """

    # Start inserts a row per targeted device (a million in one statement): every index costs, so the
    # foreign keys carry none of their own. rollout is the leading column of rolloutdevice_bucket_idx; a
    # device's active row is found through device_one_active_rollout; previous_artifact is never a filter.
    # No database FK on rollout either: its per-row check costs a trigger call per inserted row; rows
    # are only written by ota/rollouts.py for an existing rollout, and Django cascades the deletion.
    rollout = models.ForeignKey(
        Rollout, on_delete=models.CASCADE, related_name="devices", db_index=False, db_constraint=False
    )
    device = models.ForeignKey(
        "devices.Device", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    bucket = models.PositiveIntegerField()  # 0..9999 from the stable hash
    stage = models.IntegerField(null=True)  # None: beyond the last stage's share, never targeted
    active = models.BooleanField(default=True)
    previous_artifact = models.ForeignKey(
        Artifact, null=True, on_delete=models.PROTECT, db_constraint=False, db_index=False, related_name="+"
    )
    state = models.CharField(max_length=16, choices=UpdateState.choices, default=UpdateState.PENDING)
    reason = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    assigned_at = models.DateTimeField(null=True)
    deadline_at = models.DateTimeField(null=True)
    next_retry_at = models.DateTimeField(null=True)
    last_status_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device"], condition=Q(active=True), name="device_one_active_rollout"),
        ]
        indexes = [
            # The one index for the gate tick and stage openings: the cohort of stages 0..k is the bucket
            # range below stage k's limit, the control sample the range at the top (see
            # cohorts.reached_filter_limit). One index instead of one per query keeps start cheap.
            models.Index(fields=["rollout", "bucket"], name="rolloutdevice_bucket_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.rollout_id}/{self.device_id} {self.state}"


class UpdateStatusReport(models.Model):
    """Every ``devices/{id}/ota/status`` message, once (idempotent on device and seq)."""

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, db_constraint=False, related_name="+")
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    target = models.CharField(max_length=400)
    state = models.CharField(max_length=16, choices=UpdateState.choices)
    reason = models.CharField(max_length=64, blank=True)
    detail = models.CharField(max_length=500, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="ota_status_device_seq")]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.seq} {self.state}"
