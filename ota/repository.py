"""Building and signing the TUF metadata of the image repository and the director (python-tuf).

Only ota/services.py calls the writers here (under its locks and transactions); the HTTP views call
the readers. Layout served (docs/updates.md, "Device update flow"):

- image repository: ``{v}.root.json``, ``timestamp.json``, ``{v}.snapshot.json``, ``{v}.targets.json``,
  ``targets/{name}/{version}/{sha256}.{filename}`` (consistent snapshots);
- director: the same four metadata names, authenticated by the device token; its root is shared by all
  devices, its timestamp/snapshot/targets are per device (DirectorState).
"""

import datetime as dt
import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Max
from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from ota import keys
from ota.models import Artifact, DirectorState, KeyRole, Repository, RepositoryMetadata, SigningKey

SERIALIZER = JSONSerializer(compact=True)
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")


def lifetimes() -> dict[str, dt.timedelta]:
    """How long each signed file is valid. The beat task re-signs timestamps at half their lifetime."""
    return {
        "root": dt.timedelta(days=settings.OTA_ROOT_EXPIRY_DAYS),
        "targets": dt.timedelta(days=settings.OTA_TARGETS_EXPIRY_DAYS),
        "snapshot": dt.timedelta(days=settings.OTA_TARGETS_EXPIRY_DAYS),
        "timestamp": dt.timedelta(hours=settings.OTA_TIMESTAMP_EXPIRY_HOURS),
        "director": dt.timedelta(hours=settings.OTA_DIRECTOR_EXPIRY_HOURS),
    }


def _trunc(when: dt.datetime) -> dt.datetime:
    return when.replace(microsecond=0)


def serialize(md: Metadata) -> bytes:
    return md.to_bytes(SERIALIZER)


def meta_file(content: bytes, version: int) -> MetaFile:
    return MetaFile(version=version, length=len(content), hashes={"sha256": hashlib.sha256(content).hexdigest()})


# --- keys and roots -------------------------------------------------------------------------------


def active_keys(repository: str, role: str) -> list[SigningKey]:
    return list(SigningKey.objects.filter(repository=repository, role=role, active=True).order_by("id"))


def online_signer(repository: str, role: str) -> Signer:
    """The signer of an online role (the newest active key of the role)."""
    rows = active_keys(repository, role)
    if not rows:
        raise LookupError(f"no {repository}/{role} key; run `manage.py ota_keys init`")
    return keys.signer_of(rows[-1])


def _role_keys(repository: str) -> dict[str, list[SigningKey]]:
    if repository == Repository.IMAGE:
        return {role: active_keys(repository, role) for role in TOP_ROLES}
    director = active_keys(repository, KeyRole.DIRECTOR)
    return {
        "root": active_keys(repository, KeyRole.ROOT),
        "targets": director,
        "snapshot": director,
        "timestamp": director,
    }


def current(repository: str, role: str) -> RepositoryMetadata | None:
    return RepositoryMetadata.objects.filter(repository=repository, role=role).order_by("-version").first()


def current_root(repository: str) -> Metadata[Root] | None:
    row = current(repository, "root")
    return Metadata[Root].from_bytes(bytes(row.content)) if row else None


def build_root(*, repository: str, threshold: int, version: int, now: dt.datetime) -> Metadata[Root]:
    root = Root(version=version, expires=_trunc(now + lifetimes()["root"]), consistent_snapshot=True)
    for role, rows in _role_keys(repository).items():
        if not rows:
            raise LookupError(f"no active {repository} key for role {role}")
        for row in rows:
            root.add_key(keys.public_key_of(row), role)
        root.roles[role].threshold = threshold if role == "root" else 1
    return Metadata(root)


def sign_root(md: Metadata[Root], signers: list[Signer], *, previous: Metadata[Root] | None) -> None:
    """Sign a root with every given signer and check it meets the thresholds TUF clients will check:
    its own root threshold and, for a rotation, the previous root's (so clients can chain to it)."""
    for signer in signers:
        md.sign(signer, append=True)
    md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    if previous is not None:
        previous.signed.verify_delegate("root", md.signed_bytes, md.signatures)


def store(*, repository: str, role: str, md: Metadata) -> RepositoryMetadata:
    return RepositoryMetadata.objects.create(
        repository=repository, role=role, version=md.signed.version, content=serialize(md), expires_at=md.signed.expires
    )


# --- image repository -----------------------------------------------------------------------------


def image_target(artifact: Artifact) -> TargetFile:
    return TargetFile(
        length=artifact.length,
        hashes={"sha256": artifact.sha256},
        path=artifact.target_path,
        unrecognized_fields={
            "custom": {
                "name": artifact.name,
                "version": artifact.version,
                "runtime": artifact.runtime,
                "hardware": list(artifact.hardware_classes),
                "release_counter": artifact.release_counter,
            }
        },
    )


def _next_version(repository: str, role: str) -> int:
    return (
        RepositoryMetadata.objects.filter(repository=repository, role=role).aggregate(v=Max("version"))["v"] or 0
    ) + 1


def image_publish(*, now: dt.datetime) -> int:
    """Sign a new targets (every released, unrevoked artifact), snapshot and timestamp. Returns the
    targets version. The caller holds the repository lock (services._lock_repository)."""
    life = lifetimes()
    artifacts = Artifact.objects.filter(revoked_at__isnull=True).order_by("id")
    targets = Targets(
        version=_next_version(Repository.IMAGE, "targets"),
        expires=_trunc(now + life["targets"]),
        targets={a.target_path: image_target(a) for a in artifacts},
    )
    targets_md = Metadata(targets)
    targets_md.sign(online_signer(Repository.IMAGE, KeyRole.TARGETS))
    store(repository=Repository.IMAGE, role="targets", md=targets_md)
    image_sign_snapshot(now=now, targets_md=targets_md)
    return targets.version


def image_sign_snapshot(*, now: dt.datetime, targets_md: Metadata | None = None) -> None:
    life = lifetimes()
    if targets_md is None:
        row = current(Repository.IMAGE, "targets")
        targets_version = row.version
    else:
        targets_version = targets_md.signed.version
    snapshot = Snapshot(
        version=_next_version(Repository.IMAGE, "snapshot"),
        expires=_trunc(now + life["snapshot"]),
        meta={"targets.json": MetaFile(version=targets_version)},
    )
    snapshot_md = Metadata(snapshot)
    snapshot_md.sign(online_signer(Repository.IMAGE, KeyRole.SNAPSHOT))
    store(repository=Repository.IMAGE, role="snapshot", md=snapshot_md)
    image_sign_timestamp(now=now)


def image_sign_timestamp(*, now: dt.datetime) -> None:
    snapshot_row = current(Repository.IMAGE, "snapshot")
    timestamp = Timestamp(
        version=_next_version(Repository.IMAGE, "timestamp"),
        expires=_trunc(now + lifetimes()["timestamp"]),
        snapshot_meta=meta_file(bytes(snapshot_row.content), snapshot_row.version),
    )
    md = Metadata(timestamp)
    md.sign(online_signer(Repository.IMAGE, KeyRole.TIMESTAMP))
    store(repository=Repository.IMAGE, role="timestamp", md=md)


# --- director -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectorFiles:
    version: int
    timestamp: bytes
    snapshot: bytes
    targets: bytes
    expires_at: dt.datetime


def director_target(*, device_id: str, hardware: str, artifact: Artifact, rollback: bool) -> TargetFile:
    return TargetFile(
        length=artifact.length,
        hashes={"sha256": artifact.sha256},
        path=artifact.target_path,
        unrecognized_fields={
            "custom": {
                "device_id": device_id,
                "hardware": hardware,
                "release_counter": artifact.release_counter,
                "rollback": rollback,
                "name": artifact.name,
                "version": artifact.version,
            }
        },
    )


def director_sign(
    *, device_id: str, hardware: str, artifact: Artifact | None, rollback: bool, version: int, now: dt.datetime
) -> DirectorFiles:
    """One device's director targets (zero or one target), snapshot and timestamp, all at ``version``."""
    expires = _trunc(now + lifetimes()["director"])
    signer = online_signer(Repository.DIRECTOR, KeyRole.DIRECTOR)
    target_files = {}
    if artifact is not None:
        target_files[artifact.target_path] = director_target(
            device_id=device_id, hardware=hardware, artifact=artifact, rollback=rollback
        )
    targets_md = Metadata(Targets(version=version, expires=expires, targets=target_files))
    targets_md.sign(signer)
    snapshot_md = Metadata(Snapshot(version=version, expires=expires, meta={"targets.json": MetaFile(version=version)}))
    snapshot_md.sign(signer)
    snapshot_bytes = serialize(snapshot_md)
    timestamp_md = Metadata(
        Timestamp(version=version, expires=expires, snapshot_meta=meta_file(snapshot_bytes, version))
    )
    timestamp_md.sign(signer)
    return DirectorFiles(
        version=version,
        timestamp=serialize(timestamp_md),
        snapshot=snapshot_bytes,
        targets=serialize(targets_md),
        expires_at=expires,
    )


def director_needs_signing(state: DirectorState, now: dt.datetime) -> bool:
    return director_stale(
        dirty=state.dirty, signed=state.timestamp_json is not None, expires_at=state.expires_at, now=now
    )


def director_stale(*, dirty: bool, signed: bool, expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Re-sign when the assignment changed, never signed, or past half the files' lifetime."""
    margin = lifetimes()["director"] / 2
    return dirty or not signed or expires_at is None or expires_at - now < margin
