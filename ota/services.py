"""Every state change of the update system: keys, releases, the director, device update reports.

Rollouts (start, pause, resume, abort, roll back, advance, gate ticks) are in ota/rollouts.py. The REST
API, the management commands, the Celery tasks and the MQTT ingest sink all call these functions.
"""

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from securesystemslib.signer import Signer
from tuf.api.metadata import UnsignedMetadataError

from devices.models import Device
from fleet.errors import ApiError
from fleet.services import Actor, audit_record
from ota import keys, repository
from ota.models import (
    FAILED_STATES,
    Artifact,
    DirectorState,
    KeyRole,
    Repository,
    RepositoryMetadata,
    RolloutDevice,
    SigningKey,
    UpdateState,
)

logger = logging.getLogger(__name__)

ONLINE_ROLES = {
    Repository.IMAGE: [KeyRole.TARGETS, KeyRole.SNAPSHOT, KeyRole.TIMESTAMP],
    Repository.DIRECTOR: [KeyRole.DIRECTOR],
}


def _lock_repository(repository_name: str) -> None:
    """Serialise writers of one repository's metadata (two releases at once would both take the next
    version number): lock its newest root row for the transaction."""
    row = (
        RepositoryMetadata.objects.select_for_update()
        .filter(repository=repository_name, role="root")
        .order_by("-version")
        .first()
    )
    if row is None:
        raise ApiError("repository_not_initialized", "Run `manage.py ota_keys init` first.", status_code=409)


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepositoryKeys:
    """Private root keys handed out for offline keeping (PEM, encrypted with the passphrase given)."""

    exported_root_keys: dict[str, list[str]]


def repositories_initialized() -> bool:
    return RepositoryMetadata.objects.filter(role="root").values("repository").distinct().count() == 2


def repositories_init(
    *,
    actor: Actor,
    root_keys: int = 3,
    root_threshold: int = 2,
    offline_root: bool = False,
    export_passphrase: str | None = None,
    now: dt.datetime | None = None,
) -> RepositoryKeys:
    """Create the keys and first metadata of both repositories.

    With ``offline_root`` the root private keys are returned (PEM, encrypted with ``export_passphrase``)
    and not stored: signing a new root (a rotation) then needs ``threshold`` of them supplied again.
    """
    now = now or timezone.now()
    if not 1 <= root_threshold <= root_keys <= 16:
        raise ApiError("invalid_threshold", "Need 1 <= threshold <= number of root keys <= 16.", field="root_threshold")
    if offline_root and not export_passphrase:
        raise ApiError("passphrase_required", "Offline root keys are exported encrypted: give a passphrase.")
    exported: dict[str, list[str]] = {}
    try:
        with transaction.atomic():
            if repositories_initialized():
                raise ApiError("repository_initialized", "The update repositories have keys already.", status_code=409)
            for repo in (Repository.IMAGE, Repository.DIRECTOR):
                root_signers = [keys.generate_signer() for _ in range(root_keys)]
                for signer in root_signers:
                    keys.store_key(repository=repo, role=KeyRole.ROOT, signer=signer, keep_private=not offline_root)
                if offline_root:
                    exported[repo] = [keys.encrypt_private_key(s, export_passphrase) for s in root_signers]
                for role in ONLINE_ROLES[repo]:
                    keys.store_key(repository=repo, role=role, signer=keys.generate_signer())
                root_md = repository.build_root(repository=repo, threshold=root_threshold, version=1, now=now)
                repository.sign_root(root_md, root_signers, previous=None)
                repository.store(repository=repo, role="root", md=root_md)
            repository.image_publish(now=now)
            audit_record(
                actor=actor,
                action="ota.keys.init",
                object_type="update_repository",
                object_id="image+director",
                after={"root_keys": root_keys, "root_threshold": root_threshold, "offline_root": offline_root},
            )
    except IntegrityError as exc:  # another process initialised at the same moment
        raise ApiError("repository_initialized", "The update repositories have keys already.", status_code=409) from exc
    return RepositoryKeys(exported_root_keys=exported)


def repositories_ensure(*, now: dt.datetime | None = None) -> None:
    """Initialise with all keys online on first use (the embedded run); production runs the command."""
    if not repositories_initialized():
        try:
            repositories_init(actor=Actor.system("ota"), now=now)
        except ApiError as exc:
            if exc.error_code != "repository_initialized":
                raise


def _root_signers(repo: str, offline: list[Signer]) -> list[Signer]:
    online = [keys.signer_of(row) for row in repository.active_keys(repo, KeyRole.ROOT) if row.online]
    return online + list(offline)


def key_rotate(
    *,
    actor: Actor,
    repository_name: str,
    role: str,
    offline_root_signers: list[Signer] | None = None,
    export_passphrase: str | None = None,
    now: dt.datetime | None = None,
) -> RepositoryKeys:
    """Replace the keys of one role and sign a new root that lists the new keys.

    The new root is signed by a threshold of the current root keys (online ones from the database plus
    any offline ones supplied) and, for a root rotation, by the new root keys too, so that TUF clients
    chain from the old root to the new one. Image metadata is re-signed at once; director metadata is
    re-signed for each device on its next fetch.
    """
    now = now or timezone.now()
    valid_roles = [KeyRole.ROOT, *ONLINE_ROLES.get(repository_name, [])]
    if role not in valid_roles:
        raise ApiError(
            "invalid_role", f"{repository_name} has no role {role!r}; use one of {valid_roles}.", field="role"
        )
    exported: dict[str, list[str]] = {}
    with transaction.atomic():
        _lock_repository(repository_name)
        previous = repository.current_root(repository_name)
        old_rows = repository.active_keys(repository_name, role)
        signers = _root_signers(repository_name, offline_root_signers or [])
        if role == KeyRole.ROOT:
            offline = not all(row.online for row in old_rows)
            if offline and not export_passphrase:
                raise ApiError(
                    "passphrase_required", "The root keys are kept offline: give a passphrase to export the new ones."
                )
            new_signers = [keys.generate_signer() for _ in old_rows]
            for signer in new_signers:
                keys.store_key(repository=repository_name, role=role, signer=signer, keep_private=not offline)
            if offline:
                exported[repository_name] = [keys.encrypt_private_key(s, export_passphrase) for s in new_signers]
            signers = signers + new_signers
        else:
            keys.store_key(repository=repository_name, role=role, signer=keys.generate_signer())
        SigningKey.objects.filter(pk__in=[row.pk for row in old_rows]).update(active=False, retired_at=now)
        threshold = previous.signed.roles["root"].threshold
        root_md = repository.build_root(
            repository=repository_name, threshold=threshold, version=previous.signed.version + 1, now=now
        )
        try:
            repository.sign_root(root_md, signers, previous=previous)
        except UnsignedMetadataError as exc:  # fewer valid root signatures than a threshold
            raise ApiError(
                "root_threshold_not_met",
                f"Signing a new {repository_name} root needs {threshold} current root keys; supply the offline ones.",
                status_code=409,
            ) from exc
        repository.store(repository=repository_name, role="root", md=root_md)
        if repository_name == Repository.IMAGE:
            repository.image_publish(now=now)
        else:
            # Every device's director files were signed by the old key: re-sign on next fetch.
            DirectorState.objects.update(dirty=True)
        audit_record(
            actor=actor,
            action="ota.key.rotate",
            object_type="signing_key",
            object_id=f"{repository_name}/{role}",
            before={"keyids": [row.keyid for row in old_rows]},
            after={
                "keyids": [row.keyid for row in repository.active_keys(repository_name, role)],
                "root_version": root_md.signed.version,
            },
        )
    return RepositoryKeys(exported_root_keys=exported)


def timestamp_refresh(*, now: dt.datetime | None = None, force: bool = False) -> bool:
    """Re-sign the image timestamp once half its lifetime has passed (the beat task calls this hourly).
    Returns whether it signed."""
    now = now or timezone.now()
    if not repositories_initialized():
        return False
    with transaction.atomic():
        _lock_repository(Repository.IMAGE)
        row = repository.current(Repository.IMAGE, "timestamp")
        life = repository.lifetimes()
        if not force and row is not None and row.expires_at - now > life["timestamp"] / 2:
            return False
        # Targets and snapshot may be close to expiry too (no release for weeks): re-sign them with it.
        targets = repository.current(Repository.IMAGE, "targets")
        snapshot = repository.current(Repository.IMAGE, "snapshot")
        resign_snapshot = snapshot.expires_at - now < life["snapshot"] / 2
        if targets.expires_at - now < life["targets"] / 2:
            repository.image_publish(now=now)
            resign_snapshot = True
        elif resign_snapshot:
            repository.image_sign_snapshot(now=now)
        else:
            repository.image_sign_timestamp(now=now)
        audit_record(
            actor=Actor.system("ota-timestamp"),
            action="ota.timestamp.resign",
            object_type="update_repository",
            object_id="image",
            after={
                "timestamp_version": repository.current(Repository.IMAGE, "timestamp").version,
                "snapshot_resigned": resign_snapshot,
            },
        )
    return True


# --- artifacts and releases -----------------------------------------------------------------------


def _safe_filename(name: str) -> str:
    base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in base).strip("._")
    return cleaned[:100] or "model.bin"


def artifact_upload(
    *,
    actor: Actor,
    upload,
    name: str,
    version: str,
    runtime: str,
    hardware_classes: list[str],
    self_test_input=None,
    self_test_expected=None,
    now: dt.datetime | None = None,
) -> Artifact:
    """Store a model file and sign it into the image repository as a new release.

    ``upload`` is any Django File; its sha256 and length are computed while reading it in chunks, and
    reading stops as soon as it exceeds OTA_MAX_ARTIFACT_BYTES.
    """
    now = now or timezone.now()
    repositories_ensure(now=now)
    if Artifact.objects.filter(name=name, version=version).exists():
        raise ApiError("artifact_exists", f"{name}@{version} exists already.", status_code=409, field="version")
    limit = settings.OTA_MAX_ARTIFACT_BYTES
    digest = hashlib.sha256()
    length = 0
    for chunk in upload.chunks():
        length += len(chunk)
        if length > limit:
            raise ApiError("artifact_too_large", f"The artifact exceeds {limit} bytes.", status_code=413, field="file")
        digest.update(chunk)
    if length == 0:
        raise ApiError("artifact_empty", "The artifact file is empty.", field="file")
    sha256 = digest.hexdigest()
    filename = _safe_filename(getattr(upload, "name", "") or "model.bin")
    upload.seek(0)
    stored_path = default_storage.save(f"artifacts/{name}/{version}/{sha256}.{filename}", upload)
    try:
        with transaction.atomic():
            _lock_repository(Repository.IMAGE)
            counter = (Artifact.objects.filter(name=name).aggregate(c=Max("release_counter"))["c"] or 0) + 1
            artifact = Artifact.objects.create(
                name=name,
                version=version,
                runtime=runtime,
                hardware_classes=sorted(set(hardware_classes)),
                release_counter=counter,
                filename=filename,
                storage_path=stored_path,
                length=length,
                sha256=sha256,
                self_test_input=self_test_input,
                self_test_expected=self_test_expected,
                uploaded_by=actor.user,
            )
            targets_version = repository.image_publish(now=now)
            audit_record(
                actor=actor,
                action="ota.release.create",
                object_type="artifact",
                object_id=str(artifact.pk),
                after={
                    "name": name,
                    "version": version,
                    "sha256": sha256,
                    "length": length,
                    "release_counter": counter,
                    "targets_version": targets_version,
                },
            )
    except IntegrityError as exc:
        default_storage.delete(stored_path)
        raise ApiError(
            "artifact_exists", f"{name}@{version} exists already.", status_code=409, field="version"
        ) from exc
    except Exception:
        default_storage.delete(stored_path)
        raise
    return artifact


def artifact_revoke(*, actor: Actor, artifact: Artifact, reason: str = "", now: dt.datetime | None = None) -> Artifact:
    """Withdraw a release: remove it from the image targets (snapshot and timestamp re-issued), so no
    device will verify it any more, and roll back the rollouts that were shipping it."""
    from ota import rollouts  # rollouts imports this module

    now = now or timezone.now()
    with transaction.atomic():
        _lock_repository(Repository.IMAGE)
        locked = Artifact.objects.select_for_update().get(pk=artifact.pk)
        if locked.revoked_at is not None:
            return locked
        locked.revoked_at = now
        locked.revoke_reason = reason
        locked.save(update_fields=["revoked_at", "revoke_reason"])
        targets_version = repository.image_publish(now=now)
        audit_record(
            actor=actor,
            action="ota.release.revoke",
            object_type="artifact",
            object_id=str(locked.pk),
            after={"reason": reason, "targets_version": targets_version},
        )
        for rollout in locked.rollouts.filter(state__in=["running", "paused"]):
            rollouts.rollout_rollback(actor=actor, rollout=rollout, reason="release_revoked", now=now)
        # Devices that kept this release from a finished rollout get no new assignment here: the
        # director keeps naming it, and the agent refuses it (not in the image repository) with
        # reason code not_in_image_repository. Operators start a rollout of a replacement.
    return locked


# --- director -------------------------------------------------------------------------------------


def director_assign(
    *, device_ids: list[str], artifact: Artifact | None, rollback: bool = False, rollout_id: int | None = None
) -> int:
    """Point the director of these devices at an artifact (one upsert; signing happens on fetch)."""
    if connection.vendor != "postgresql":
        return _director_assign_orm(device_ids=device_ids, artifact=artifact, rollback=rollback, rollout_id=rollout_id)
    # One statement with the ids as one array parameter: a stage of 100,000 devices costs neither
    # 100,000 model instances nor a query of a million placeholders for the driver to parse. Same row
    # as _director_assign_orm: new rows get the model defaults, existing ones only these four columns.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ota_directorstate (device_id, artifact_id, rollback, rollout_id, version, dirty, updated_at)"
            " SELECT id, %s, %s, %s, 0, true, %s FROM unnest(%s::varchar[]) AS ids(id)"
            " ON CONFLICT (device_id) DO UPDATE SET artifact_id = excluded.artifact_id,"
            " rollback = excluded.rollback, rollout_id = excluded.rollout_id, dirty = true",
            [artifact.pk if artifact else None, rollback, rollout_id, timezone.now(), list(device_ids)],
        )
    return len(device_ids)


def _director_assign_orm(
    *, device_ids: list[str], artifact: Artifact | None, rollback: bool, rollout_id: int | None
) -> int:
    """director_assign for databases without arrays (the embedded SQLite run)."""
    rows = [
        DirectorState(device_id=device_id, artifact=artifact, rollback=rollback, rollout_id=rollout_id, dirty=True)
        for device_id in device_ids
    ]
    DirectorState.objects.bulk_create(
        rows,
        batch_size=5000,
        update_conflicts=True,
        unique_fields=["device"],
        update_fields=["artifact", "rollback", "rollout", "dirty"],
    )
    return len(rows)


def director_files(*, device: Device, now: dt.datetime | None = None) -> DirectorState:
    """The device's current signed director files, re-signed first when stale or changed."""
    now = now or timezone.now()
    for _attempt in range(5):
        state = DirectorState.objects.select_related("artifact").filter(pk=device.pk).first()
        if state is None:
            DirectorState.objects.bulk_create([DirectorState(device_id=device.pk)], ignore_conflicts=True)
            continue
        if not repository.director_needs_signing(state, now):
            return state
        files = repository.director_sign(
            device_id=device.pk,
            hardware=device.hardware_class,
            artifact=state.artifact,
            rollback=state.rollback,
            version=state.version + 1,
            now=now,
        )
        # Conditional on what we signed: a concurrent fetch that signed first bumped the version, and a
        # concurrent assignment changed artifact/rollback; either way our files are stale, so retry.
        updated = DirectorState.objects.filter(
            pk=device.pk, version=state.version, artifact_id=state.artifact_id, rollback=state.rollback
        ).update(
            version=files.version,
            timestamp_json=files.timestamp,
            snapshot_json=files.snapshot,
            targets_json=files.targets,
            expires_at=files.expires_at,
            dirty=False,
        )
        if updated:
            state.version = files.version
            state.timestamp_json, state.snapshot_json, state.targets_json = (
                files.timestamp,
                files.snapshot,
                files.targets,
            )
            state.expires_at, state.dirty = files.expires_at, False
            return state
    raise ApiError("director_busy", "Director metadata changed while signing; retry.", status_code=503)


# --- device update reports ------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    device_id: str
    seq: int
    ts: dt.datetime
    target: str
    state: str
    reason: str = ""
    detail: str = ""


def update_status_record(*, report: StatusReport, received_at: dt.datetime) -> bool:
    """Store one ``ota/status`` report once (idempotent on device and seq) and apply it to the device's
    update in its active rollout. Returns False for a duplicate."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ota_updatestatusreport (device_id, seq, ts, target, state, reason, detail, received_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device_id, seq) DO NOTHING RETURNING id",
            [
                report.device_id,
                report.seq,
                report.ts,
                report.target,
                report.state,
                report.reason,
                report.detail,
                received_at,
            ],
        )
        if cursor.fetchone() is None:
            return False
    # The ingest worker and the gate tick (timeouts, retries) both write this row: lock it.
    update = (
        RolloutDevice.objects.select_for_update()
        .select_related("rollout__artifact")
        .filter(device_id=report.device_id, active=True)
        .first()
    )
    if update is None or update.rollout.artifact.target_path != report.target:
        return True  # a report about another release (e.g. a rollback install): kept, nothing to change
    if update.state == UpdateState.PENDING:
        return True
    if update.last_status_at is not None and report.ts < update.last_status_at:
        return True  # out of order: an older report must not overwrite a newer state
    update.state = report.state
    update.reason = report.reason[:64]
    update.last_status_at = report.ts
    changed = ["state", "reason", "last_status_at"]
    if report.state in FAILED_STATES:
        rollout = update.rollout
        if update.attempts <= rollout.max_retries:
            update.next_retry_at = received_at + dt.timedelta(
                seconds=rollout.retry_backoff_seconds * 2 ** max(update.attempts - 1, 0)
            )
        changed.append("next_retry_at")
    update.save(update_fields=changed)
    return True
