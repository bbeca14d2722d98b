from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from fleet_agent.protocol import DEVICE_ID_PATTERN

device_id_validator = RegexValidator(
    rf"^{DEVICE_ID_PATTERN}$",
    "Device ids are 3-63 characters of lowercase letters, digits and '-', starting with a letter or digit.",
    code="device_id_invalid",
)


class DeviceGroup(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.SlugField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DeviceStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class Device(models.Model):
    id = models.CharField(primary_key=True, max_length=63, validators=[device_id_validator])
    name = models.CharField(max_length=200, blank=True)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="devices")
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices")
    hardware_class = models.CharField(max_length=64, blank=True)
    runtime = models.CharField(max_length=64, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    # Presence, written by the MQTT ingest worker from the device's status topic and its messages.
    online = models.BooleanField(default=False)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # The device's HTTP credential (sha256 of a random secret): enrollment polling, certificate renewal,
    # update metadata and the LLM gateway. Never an operator credential.
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # The CSR a pending device sent, signed on approval.
    pending_csr_pem = models.TextField(blank=True)
    enrollment_token = models.ForeignKey(
        "EnrollmentToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            # The device list pages by id (cursor) under one filter; each index serves one filter
            # as a range scan in id order, so a page costs the same at a million rows as at a hundred.
            models.Index(fields=["status", "id"], name="device_status_id_idx"),
            models.Index(fields=["group", "id"], name="device_group_id_idx"),
            models.Index(fields=["hardware_class", "id"], name="device_hw_id_idx"),
            models.Index(fields=["last_seen_at"], name="device_last_seen_idx"),
        ]

    def __str__(self) -> str:
        return self.id


class EnrollmentToken(models.Model):
    """A shared secret that lets devices enroll, e.g. baked into a production batch's image.

    Only the sha256 of the secret is stored: it is a 256-bit random value, so a fast hash is enough
    (no dictionary to attack) and keeps enrollment fast.
    """

    name = models.CharField(max_length=200)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters of the secret, to recognise a token in lists without being able to use it.
    prefix = models.CharField(max_length=12)
    group = models.ForeignKey(DeviceGroup, null=True, blank=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag, blank=True)
    max_uses = models.PositiveIntegerField(default=1)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    auto_accept = models.BooleanField(default=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(uses__lte=models.F("max_uses")), name="token_uses_within_max"),
            models.CheckConstraint(condition=Q(max_uses__gte=1), name="token_max_uses_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class CertificateAuthority(models.Model):
    """The device CA. One active row; the key is encrypted with FLEET_KEY_ENCRYPTION_SECRET."""

    name = models.CharField(max_length=200)
    certificate_pem = models.TextField()
    encrypted_key_pem = models.TextField()
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Two processes creating the CA on first use at once: the second insert fails instead of
            # leaving two active CAs.
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_active_ca"),
        ]

    def __str__(self) -> str:
        return self.name


class DeviceCertificate(models.Model):
    """Every certificate issued, kept for the revocation list and the device's history."""

    serial = models.CharField(max_length=64, primary_key=True)  # hex
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates")
    certificate_pem = models.TextField()
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-not_after"]
        indexes = [
            # The CRL lists revoked certificates that have not expired yet.
            models.Index(fields=["revoked_at", "not_after"], name="cert_revoked_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} #{self.serial}"
