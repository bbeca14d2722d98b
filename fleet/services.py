"""State changes that span apps: operator accounts and the audit log."""

import secrets
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from rest_framework.authtoken.models import Token

from fleet.models import AuditEvent, Role, User


@dataclass(frozen=True)
class Actor:
    """Who performs a state change: an operator, a device, or the platform itself."""

    label: str
    user: User | None = None

    @classmethod
    def of_user(cls, user: User) -> "Actor":
        return cls(label=f"user:{user.username}", user=user)

    @classmethod
    def of_device(cls, device_id: str) -> "Actor":
        return cls(label=f"device:{device_id}")

    @classmethod
    def system(cls, component: str) -> "Actor":
        return cls(label=f"system:{component}")


def audit_record(
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor_user=actor.user,
        actor=actor.label,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        before=before,
        after=after,
    )


@dataclass(frozen=True)
class OperatorCredentials:
    user: User
    password: str | None  # only when the service generated it
    api_token: str


@transaction.atomic
def operator_ensure(*, username: str, role: str = Role.ADMIN, password: str | None = None) -> OperatorCredentials:
    """Create the operator account if missing (with a generated password) and return its API token.

    Used by `make run` to give a newcomer a first login; running it again keeps the existing password.
    """
    user = User.objects.filter(username=username).first()
    generated = None
    if user is None:
        generated = password or secrets.token_urlsafe(12)
        user = User.objects.create_user(username=username, password=generated, role=role, is_staff=True)
        audit_record(
            actor=Actor.system("bootstrap"),
            action="operator.create",
            object_type="user",
            object_id=user.username,
            after={"username": user.username, "role": role},
        )
    token, _ = Token.objects.get_or_create(user=user)
    return OperatorCredentials(user=user, password=generated, api_token=token.key)
