from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"  # everything, including signing keys and operator accounts
    OPERATOR = "operator", "Operator"  # devices, rollouts, policies
    VIEWER = "viewer", "Viewer"  # read-only


# Higher rank includes every right of the lower ones.
ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class User(AbstractUser):
    """An operator account of the console and the REST API."""

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    def has_role(self, role: str) -> bool:
        return self.is_active and ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]


class AuditEvent(models.Model):
    """Who changed what, when, with the state before and after. Written by services, never edited."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # A readable name that survives the deletion of the user: "user:alice", "device:cam-1", "system:gates".
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The console shows one object's history: filter by object, newest first.
            models.Index(fields=["object_type", "object_id", "-id"], name="audit_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type}:{self.object_id}"
