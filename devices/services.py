"""Every state change of the device registry. The REST API, the console and the workers call these."""

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from cryptography import x509
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from devices import authority
from devices.ca import CsrError, cert_pem, check_csr
from devices.models import Device, DeviceCertificate, DeviceGroup, DeviceStatus, EnrollmentToken, Tag
from devices.tasks import crl_refresh
from fleet.errors import ApiError
from fleet.services import Actor, audit_record
from fleet_agent.protocol import is_valid_device_id
from telemetry import services as telemetry_services

TOKEN_PREFIX = "fet_"  # noqa: S105 - a public prefix, not a secret (fleet enrollment token)
DEVICE_TOKEN_PREFIX = "fdt_"  # noqa: S105 - a public prefix (fleet device token)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _device_snapshot(device: Device) -> dict:
    return {
        "id": device.id,
        "name": device.name,
        "status": device.status,
        "group": device.group.name if device.group_id else None,
        "tags": sorted(t.name for t in device.tags.all()),
        "hardware_class": device.hardware_class,
        "runtime": device.runtime,
    }


def _tags_named(names: list[str]) -> list[Tag]:
    """Get or create tags by name (bulk: one query to read, one to insert the missing ones)."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    Tag.objects.bulk_create([Tag(name=name) for name in wanted], ignore_conflicts=True)
    return list(Tag.objects.filter(name__in=wanted))


# --- groups -------------------------------------------------------------------------------------


def group_create(*, actor: Actor, name: str, description: str = "") -> DeviceGroup:
    if DeviceGroup.objects.filter(name=name).exists():
        raise ApiError("group_exists", f"A group named {name!r} exists already.", status_code=409, field="name")
    group = DeviceGroup.objects.create(name=name, description=description)
    audit_record(actor=actor, action="group.create", object_type="group", object_id=name, after={"name": name})
    return group


def group_update(*, actor: Actor, group: DeviceGroup, description: str) -> DeviceGroup:
    before = {"description": group.description}
    group.description = description
    group.save(update_fields=["description"])
    audit_record(
        actor=actor,
        action="group.update",
        object_type="group",
        object_id=group.name,
        before=before,
        after={"description": description},
    )
    return group


def group_delete(*, actor: Actor, group: DeviceGroup) -> None:
    # Devices of a deleted group become ungrouped (FK SET_NULL); their records stay.
    name = group.name
    group.delete()
    audit_record(actor=actor, action="group.delete", object_type="group", object_id=name, before={"name": name})


# --- enrollment tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: EnrollmentToken
    secret: str  # shown once


def enrollment_token_create(
    *,
    actor: Actor,
    name: str,
    group: DeviceGroup | None = None,
    tags: list[str] | None = None,
    max_uses: int = 1,
    expires_at: dt.datetime | None = None,
    auto_accept: bool = True,
) -> IssuedToken:
    if max_uses < 1:
        raise ApiError("invalid", "max_uses must be at least 1.", field="max_uses")
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiError("expiry_in_past", "expires_at must be in the future.", field="expires_at")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = EnrollmentToken.objects.create(
            name=name,
            token_hash=hash_secret(secret),
            prefix=secret[:10],
            group=group,
            max_uses=max_uses,
            expires_at=expires_at,
            auto_accept=auto_accept,
            created_by=actor.user,
        )
        token.tags.set(_tags_named(tags or []))
        audit_record(
            actor=actor,
            action="enrollment_token.create",
            object_type="enrollment_token",
            object_id=str(token.pk),
            after={
                "name": name,
                "group": group.name if group else None,
                "tags": sorted(tags or []),
                "max_uses": max_uses,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "auto_accept": auto_accept,
            },
        )
    return IssuedToken(token=token, secret=secret)


def enrollment_token_revoke(*, actor: Actor, token: EnrollmentToken) -> EnrollmentToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="enrollment_token.revoke",
            object_type="enrollment_token",
            object_id=str(token.pk),
            after={"revoked_at": token.revoked_at.isoformat()},
        )
    return token


# --- enrollment -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentResult:
    device: Device
    device_token: str
    certificate_pem: str | None  # None while the device waits for approval
    ca_chain_pem: str


@dataclass(frozen=True)
class ClaimedToken:
    id: int
    group_id: int | None
    auto_accept: bool
    has_tags: bool  # lets enrollment skip reading the tags of the (common) token without any


def _claim_token_use(secret: str) -> ClaimedToken:
    """Take one use of an enrollment token, or raise with the reason it cannot be used.

    The conditional UPDATE ... WHERE uses < max_uses is the race guard: two devices enrolling with the
    last use at once both run it, the database serialises them on the row, and only one gets a row
    back. RETURNING gives what enrollment needs in the same round trip (enrollment is the hot path:
    see docs/performance.md); the reason for a refusal is only looked up when there is one. The
    caller's transaction rolls the use back if enrollment fails later.
    """
    if not isinstance(secret, str) or not secret:
        raise ApiError("token_missing", "An enrollment token is required.", status_code=400, field="token")
    token_hash = hash_secret(secret)
    now = timezone.now()
    table = EnrollmentToken._meta.db_table
    tags_table = EnrollmentToken.tags.through._meta.db_table
    with connection.cursor() as cursor:
        # Plain SQL because the ORM's update() cannot return columns; RETURNING works on PostgreSQL
        # and on the SQLite of the embedded run (3.35+).
        cursor.execute(
            f"UPDATE {table} SET uses = uses + 1 "  # noqa: S608 - the table name comes from the model
            "WHERE token_hash = %s AND revoked_at IS NULL AND uses < max_uses "
            "AND (expires_at IS NULL OR expires_at > %s) "
            f"RETURNING id, group_id, auto_accept, EXISTS (SELECT 1 FROM {tags_table} "
            f"WHERE {tags_table}.enrollmenttoken_id = {table}.id)",
            [token_hash, now],
        )
        row = cursor.fetchone()
    if row is not None:
        return ClaimedToken(id=row[0], group_id=row[1], auto_accept=bool(row[2]), has_tags=bool(row[3]))
    token = EnrollmentToken.objects.filter(token_hash=token_hash).first()
    if token is None:
        raise ApiError("token_unknown", "The enrollment token is not known.", status_code=401, field="token")
    if token.revoked_at is not None:
        raise ApiError("token_revoked", "The enrollment token has been revoked.", status_code=403, field="token")
    if token.expires_at is not None and token.expires_at <= now:
        raise ApiError("token_expired", "The enrollment token has expired.", status_code=403, field="token")
    raise ApiError("token_used_up", "The enrollment token has no uses left.", status_code=403, field="token")


def _checked_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return check_csr(csr_pem)
    except CsrError as exc:
        raise ApiError(exc.code, str(exc), field="csr") from exc


def _store_certificate(device: Device, cert: x509.Certificate) -> DeviceCertificate:
    return DeviceCertificate.objects.create(
        serial=format(cert.serial_number, "x"),
        device=device,
        certificate_pem=cert_pem(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _new_device_id() -> str:
    return "dev-" + secrets.token_hex(6)


def device_enroll(
    *,
    token: str,
    csr_pem: str,
    device_id: str | None = None,
    name: str = "",
    hardware_class: str = "",
    runtime: str = "",
    agent_version: str = "",
) -> EnrollmentResult:
    """Register a device from its CSR, under an enrollment token.

    The device id is the CSR's common name; ``device_id`` may repeat it (it must then match) or stand in
    for an empty CN; with neither, the platform assigns one. Everything happens in one transaction:
    a refused enrollment creates nothing and consumes no token use.
    """
    checked = _checked_csr(csr_pem)
    requested = checked.common_name or device_id or ""
    if checked.common_name and device_id and checked.common_name != device_id:
        raise ApiError(
            "csr_mismatch",
            f"The CSR's common name {checked.common_name!r} differs from the requested id {device_id!r}.",
            field="csr",
        )
    if requested and not is_valid_device_id(requested):
        raise ApiError(
            "device_id_invalid",
            "Device ids are 3-63 characters of lowercase letters, digits and '-', starting with a letter or digit.",
            field="device_id",
        )
    final_id = requested or _new_device_id()
    device_secret = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            enrollment_token = _claim_token_use(token)
            # No existence check first: a taken id fails the primary-key insert below (IntegrityError,
            # handled after the transaction), which also covers two enrollments racing for one id.
            active = enrollment_token.auto_accept
            device = Device.objects.create(
                id=final_id,
                name=name or final_id,
                group_id=enrollment_token.group_id,
                hardware_class=hardware_class,
                runtime=runtime,
                agent_version=agent_version,
                status=DeviceStatus.ACTIVE if active else DeviceStatus.PENDING,
                token_hash=hash_secret(device_secret),
                pending_csr_pem="" if active else csr_pem,
                enrollment_token_id=enrollment_token.id,
            )
            if enrollment_token.has_tags:
                tag_ids = EnrollmentToken.tags.through.objects.filter(
                    enrollmenttoken_id=enrollment_token.id
                ).values_list("tag_id", flat=True)
                Device.tags.through.objects.bulk_create(
                    [Device.tags.through(device_id=final_id, tag_id=tag_id) for tag_id in tag_ids]
                )
            certificate = None
            ca = authority.active_ca()
            if active:
                cert = authority.issue_client_certificate(
                    public_key=checked.csr.public_key(), common_name=final_id, authority=ca
                )
                _store_certificate(device, cert)
                certificate = cert_pem(cert)
            audit_record(
                actor=Actor.of_device(final_id),
                action="device.enroll",
                object_type="device",
                object_id=final_id,
                after={
                    "status": device.status,
                    "enrollment_token": enrollment_token.id,
                    "hardware_class": hardware_class,
                    "runtime": runtime,
                    "agent_version": agent_version,
                },
            )
    except IntegrityError as exc:
        # The id is taken (enrolled before, or by a concurrent enrollment): the primary-key violation
        # rolled everything back, the token use included.
        raise ApiError(
            "device_id_taken", f"Device id {final_id!r} is already enrolled.", status_code=409, field="device_id"
        ) from exc
    return EnrollmentResult(
        device=device,
        device_token=device_secret,
        certificate_pem=certificate,
        ca_chain_pem=ca.certificate_pem,
    )


def device_approve(*, actor: Actor, device: Device) -> Device:
    """Sign the pending device's CSR and make it active."""
    with transaction.atomic():
        # Two operators approving at once must not issue two certificates.
        device = Device.objects.select_for_update().get(pk=device.pk)
        if device.status != DeviceStatus.PENDING:
            raise ApiError(
                "device_not_pending", f"Device {device.id} is {device.status}, not pending.", status_code=409
            )
        checked = _checked_csr(device.pending_csr_pem)
        cert = authority.issue_client_certificate(public_key=checked.csr.public_key(), common_name=device.id)
        _store_certificate(device, cert)
        device.status = DeviceStatus.ACTIVE
        device.pending_csr_pem = ""
        device.save(update_fields=["status", "pending_csr_pem"])
        audit_record(
            actor=actor,
            action="device.approve",
            object_type="device",
            object_id=device.id,
            before={"status": DeviceStatus.PENDING},
            after={"status": DeviceStatus.ACTIVE, "certificate_serial": format(cert.serial_number, "x")},
        )
    return device


def device_revoke(*, actor: Actor, device: Device, reason: str = "") -> Device:
    """Revoke a device: its certificates go on the revocation list and its HTTP credential stops working."""
    with transaction.atomic():
        presence = telemetry_services.presence_lock(device_id=device.pk)  # before the device row: see there
        device = Device.objects.select_for_update().get(pk=device.pk)
        if device.status == DeviceStatus.REVOKED:
            return device
        before = device.status
        now = timezone.now()
        device.status = DeviceStatus.REVOKED
        device.online = False
        device.save(update_fields=["status", "online"])
        telemetry_services.presence_revoke(presence, at=now)
        revoked_serials = list(device.certificates.filter(revoked_at__isnull=True).values_list("serial", flat=True))
        device.certificates.filter(revoked_at__isnull=True).update(revoked_at=now)
        audit_record(
            actor=actor,
            action="device.revoke",
            object_type="device",
            object_id=device.id,
            before={"status": before},
            after={"status": DeviceStatus.REVOKED, "reason": reason, "revoked_certificates": revoked_serials},
        )
        # The broker must refuse the revoked certificates: rewrite its CRL once this is committed.
        transaction.on_commit(crl_refresh.delay)
    return device


def device_renew_certificate(*, device: Device, csr_pem: str) -> tuple[str, str]:
    """Issue a fresh certificate to an active device for a new CSR (same id, possibly a new key).

    The caller has authenticated the device (its device token). Returns (certificate PEM, CA chain PEM).
    """
    if device.status != DeviceStatus.ACTIVE:
        raise ApiError("device_not_active", f"Device {device.id} is {device.status}.", status_code=403)
    checked = _checked_csr(csr_pem)
    if checked.common_name != device.id:
        raise ApiError("csr_mismatch", f"The CSR's common name must be the device id {device.id!r}.", field="csr")
    cert = authority.issue_client_certificate(public_key=checked.csr.public_key(), common_name=device.id)
    with transaction.atomic():
        _store_certificate(device, cert)
        audit_record(
            actor=Actor.of_device(device.id),
            action="device.renew_certificate",
            object_type="device",
            object_id=device.id,
            after={
                "certificate_serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )
    return cert_pem(cert), authority.active_ca().certificate_pem


def device_update(
    *,
    actor: Actor,
    device: Device,
    name: str | None = None,
    group: DeviceGroup | bool | None = False,
    tags: list[str] | None = None,
) -> Device:
    """Change a device's name, group (None ungroups; False leaves it) or full tag set."""
    with transaction.atomic():
        before = _device_snapshot(device)
        fields = []
        if name is not None:
            device.name = name
            fields.append("name")
        if group is not False:
            device.group = group
            fields.append("group")
        if fields:
            device.save(update_fields=fields)
        if tags is not None:
            device.tags.set(_tags_named(tags))
        after = _device_snapshot(device)
        if after != before:
            audit_record(
                actor=actor,
                action="device.update",
                object_type="device",
                object_id=device.id,
                before=before,
                after=after,
            )
    return device


MAX_BULK_DEVICES = 10_000


def devices_bulk_update(
    *,
    actor: Actor,
    device_ids: list[str],
    add_tags: list[str] | None = None,
    remove_tags: list[str] | None = None,
    group: DeviceGroup | bool | None = False,
) -> int:
    """Tag, untag or regroup many devices in a few statements; returns how many devices matched."""
    if len(device_ids) > MAX_BULK_DEVICES:
        raise ApiError("too_many_devices", f"At most {MAX_BULK_DEVICES} devices per bulk request.", field="device_ids")
    ids = sorted(set(device_ids))
    with transaction.atomic():
        found = list(Device.objects.filter(pk__in=ids).values_list("pk", flat=True))
        missing = sorted(set(ids) - set(found))
        if missing:
            raise ApiError(
                "device_not_found",
                f"{len(missing)} device(s) do not exist, e.g. {missing[0]!r}; nothing was changed.",
                status_code=404,
                field="device_ids",
            )
        through = Device.tags.through
        if add_tags:
            tags = _tags_named(add_tags)
            through.objects.bulk_create(
                [through(device_id=device_id, tag_id=tag.pk) for device_id in found for tag in tags],
                ignore_conflicts=True,
            )
        if remove_tags:
            through.objects.filter(device_id__in=found, tag__name__in=remove_tags).delete()
        if group is not False:
            Device.objects.filter(pk__in=found).update(group=group)
        audit_record(
            actor=actor,
            action="device.bulk_update",
            object_type="device",
            object_id=f"{len(found)} devices",
            after={
                "device_ids": found[:100],
                "count": len(found),
                "add_tags": sorted(add_tags or []),
                "remove_tags": sorted(remove_tags or []),
                "group": (group.name if group else None) if group is not False else "unchanged",
            },
        )
    return len(found)


def device_token_hash(secret: str) -> str | None:
    """What a device token is stored as (``Device.token_hash``); None for a string that is no device token."""
    if not secret.startswith(DEVICE_TOKEN_PREFIX):
        return None
    return hash_secret(secret)


def device_authenticate_token(secret: str) -> Device | None:
    """The device behind an HTTP device token, if the token is known and the device not revoked."""
    token_hash = device_token_hash(secret)
    if token_hash is None:
        return None
    device = Device.objects.filter(token_hash=token_hash).first()
    if device is None or device.status == DeviceStatus.REVOKED:
        return None
    return device


def device_mark_seen(*, device_id: str, online: bool | None = None, at: dt.datetime | None = None) -> None:
    """Presence: record that a device was heard from. One conditional UPDATE, no read, so the ingest
    worker can call it per message batch; last_seen only moves forward (late messages don't rewind it)."""
    at = at or timezone.now()
    updates = {"last_seen_at": at}
    if online is not None:
        updates["online"] = online
    Device.objects.filter(pk=device_id).filter(Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=at)).update(**updates)
    if online is not None:
        Device.objects.filter(pk=device_id).exclude(online=online).update(online=online)
