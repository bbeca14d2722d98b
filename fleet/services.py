"""State changes that span apps: operator accounts and the audit log."""

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from fleet.errors import ApiError
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


# --- operator accounts (admin only) ----------------------------------------------------------------


def _operator_snapshot(user: User) -> dict[str, Any]:
    # Never the password hash: the audit log is readable by every viewer.
    return {"username": user.username, "email": user.email, "role": user.role, "is_active": user.is_active}


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise ApiError("role_invalid", f"Role must be one of {', '.join(Role.values)}.", field="role")


def _lock_active_admins() -> set[int]:
    """The ids of the active admins, their rows locked, always in id order.

    Two admins demoting or deactivating each other at once would each see the other still active and
    both succeed, leaving no admin. Every role or activity change locks all active admin rows first, in
    one order (so two such changes cannot deadlock): the second waits for the first to commit, then
    reads the admins that are left.
    """
    return set(
        User.objects.select_for_update()
        .filter(role=Role.ADMIN, is_active=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


@transaction.atomic
def operator_create(
    *, actor: Actor, username: str, role: str, email: str = "", password: str | None = None
) -> OperatorCredentials:
    """Create an operator account and its API token (returned once, in the result).

    Without a password the account can only use the API token (no console login) until one is set.
    """
    _check_role(role)
    if User.objects.filter(username__iexact=username).exists():
        raise ApiError(
            "operator_exists", f"An operator named {username!r} exists already.", status_code=409, field="username"
        )
    user = User(username=username, email=email, role=role, is_staff=role == Role.ADMIN)
    if password:
        try:
            validate_password(password, user=user)
        except ValidationError as exc:
            raise ApiError("password_too_weak", " ".join(exc.messages), field="password") from exc
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    token = Token.objects.create(user=user)
    audit_record(
        actor=actor,
        action="operator.create",
        object_type="user",
        object_id=user.username,
        after=_operator_snapshot(user),
    )
    return OperatorCredentials(user=user, password=None, api_token=token.key)


@transaction.atomic
def operator_set_role(*, actor: Actor, user: User, role: str) -> User:
    _check_role(role)
    admins = _lock_active_admins()
    user = User.objects.select_for_update().get(pk=user.pk)
    if user.role == role:
        return user
    if user.role == Role.ADMIN and user.is_active and not admins - {user.pk}:
        raise ApiError(
            "last_admin", "This is the last active admin; make another admin first.", status_code=409, field="role"
        )
    before = _operator_snapshot(user)
    user.role = role
    user.is_staff = role == Role.ADMIN
    user.save(update_fields=["role", "is_staff"])
    audit_record(
        actor=actor,
        action="operator.set_role",
        object_type="user",
        object_id=user.username,
        before=before,
        after=_operator_snapshot(user),
    )
    return user


@transaction.atomic
def operator_deactivate(*, actor: Actor, user: User) -> User:
    """Disable an account: no console login, and its API token is deleted (not just disabled), so
    reactivating an account never revives a token that may have leaked."""
    admins = _lock_active_admins()
    user = User.objects.select_for_update().get(pk=user.pk)
    if not user.is_active:
        return user
    if user.role == Role.ADMIN and not admins - {user.pk}:
        raise ApiError("last_admin", "This is the last active admin; make another admin first.", status_code=409)
    before = _operator_snapshot(user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    Token.objects.filter(user=user).delete()
    audit_record(
        actor=actor,
        action="operator.deactivate",
        object_type="user",
        object_id=user.username,
        before=before,
        after=_operator_snapshot(user),
    )
    return user
