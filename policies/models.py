"""Cloud-LLM policies: scope documents, the policy signing key, what each device was sent, the usage
ledger and the budget counters the gateway reserves against."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Scope(models.TextChoices):
    FLEET = "fleet", "Fleet default"
    GROUP = "group", "Group"
    DEVICE = "device", "Device"


class Policy(models.Model):
    """One scope's policy document (fleet_agent.policy.document). At most one per scope target."""

    scope = models.CharField(max_length=8, choices=Scope.choices)
    group = models.OneToOneField(
        "devices.DeviceGroup", null=True, blank=True, on_delete=models.CASCADE, related_name="llm_policy"
    )
    device = models.OneToOneField(
        "devices.Device", null=True, blank=True, on_delete=models.CASCADE, related_name="llm_policy"
    )
    document = models.JSONField()
    # Bumped on every change: lets the gateway cache compiled policies by (id, version).
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["scope"], condition=Q(scope="fleet"), name="one_fleet_policy"),
            models.CheckConstraint(
                condition=(
                    Q(scope="fleet", group__isnull=True, device__isnull=True)
                    | Q(scope="group", group__isnull=False, device__isnull=True)
                    | Q(scope="device", group__isnull=True, device__isnull=False)
                ),
                name="policy_scope_target_matches",
            ),
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        if self.scope == Scope.GROUP:
            return f"group:{self.group.name}"
        if self.scope == Scope.DEVICE:
            return f"device:{self.device_id}"
        return "fleet"


class PolicySigningKey(models.Model):
    """The platform's Ed25519 policy key. One active row; the private key is encrypted with
    FLEET_KEY_ENCRYPTION_SECRET; the public key is given to devices at enrollment."""

    key_id = models.CharField(max_length=32, unique=True)
    public_key_pem = models.TextField()
    encrypted_private_key_pem = models.TextField()
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Two processes creating the key on first use: the second insert fails and uses the first.
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_active_policy_key"),
        ]

    def __str__(self) -> str:
        return self.key_id


class PublishedPolicy(models.Model):
    """The signed effective policy last published to a device (retained on devices/{id}/policy)."""

    device = models.OneToOneField("devices.Device", primary_key=True, on_delete=models.CASCADE)
    # Monotonic per device: the agent refuses a version not higher than the one it holds.
    version = models.PositiveIntegerField(default=0)
    digest = models.CharField(max_length=64)  # sha256 of the canonical effective policy: skip no-op republishes
    envelope = models.BinaryField()
    published_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.device_id} v{self.version}"


class Source(models.TextChoices):
    GATEWAY = "gateway", "Gateway (authoritative)"
    DEVICE = "device", "Device report"


class LlmUsage(models.Model):
    """The ledger: one row per gateway request (every decision, allowed or not) and per device report."""

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="llm_usage")
    # The device's group when the row was written, so usage per group survives regrouping.
    group_name = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=8, choices=Source.choices)
    seq = models.BigIntegerField(null=True, blank=True)  # device reports: the message's seq
    at = models.DateTimeField(db_index=True)
    task = models.CharField(max_length=64)
    data_class = models.CharField(max_length=64)
    route = models.CharField(max_length=8)  # local, cloud, deny
    reason = models.CharField(max_length=32)
    model = models.CharField(max_length=128, blank=True)
    upstream = models.CharField(max_length=64, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)  # in millionths of LLM_CURRENCY
    # Gateway rows: reserved -> settled (or released when the upstream failed).
    state = models.CharField(max_length=10, blank=True)
    reserved = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # Idempotent ingest: a redelivered device report is stored once.
            models.UniqueConstraint(
                fields=["device", "seq"], condition=Q(source="device"), name="llm_usage_device_seq_unique"
            ),
        ]
        indexes = [
            # Usage per device and window: a range scan on (device, at).
            models.Index(fields=["device", "at"], name="llm_usage_device_at_idx"),
            models.Index(fields=["group_name", "at"], name="llm_usage_group_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.task} {self.route}/{self.reason}"


class BudgetCounter(models.Model):
    """What a device has used (settled + reserved) in one budget window. The gateway reserves with a
    conditional UPDATE, so concurrent requests cannot together go past the limit."""

    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="budget_counters")
    window = models.CharField(max_length=8)  # minute (rate limit), hour, day, month
    window_start = models.DateTimeField()
    tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "window", "window_start"], name="budget_counter_unique"),
        ]
        indexes = [
            # The dashboard sums the counters of the current window across devices (usage against budgets);
            # the unique constraint leads with the device, so it cannot find one window's rows.
            models.Index(fields=["window", "window_start"], name="budget_counter_window_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.window}@{self.window_start:%Y-%m-%d %H:%M}"
