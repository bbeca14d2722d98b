"""Verified model updates for the device (Uptane-style, on python-tuf's ngclient).

The platform runs two TUF repositories: the **image repository** lists every released model file, and
the **director** tells this one device which file it should run now. An update is accepted only if
both agree, so an attacker needs the keys of both to make a device install something:

1. refresh the director's metadata (root -> timestamp -> snapshot -> targets), authenticated with the
   device token, from the director root received at enrollment;
2. refresh the image repository's metadata the same way from its own enrollment root;
3. the director names at most one target; it must be for this device id and hardware class, the image
   repository must list the same path with the identical length and hashes, the length must be within
   the size cap, and the release counter must not be lower than the installed one unless the director
   signed ``rollback: true``;
4. download the file from the image repository; ngclient checks its length and sha256.

Both roots are passed in from what enrollment stored, every time (``bootstrap``): the agent never
trusts a root it merely found in its cache. Newer roots (key rotations) are fetched and verified
against the chain from that root, and the local metadata copies kept under ``state_dir`` make a
replayed older timestamp/snapshot/targets fail.

Usage::

    client = UptaneClient(trust, state_dir=Path("/var/lib/fleet-agent/tuf"))
    assignment = client.check(installed_counter=7)      # None: nothing assigned
    if assignment and assignment.sha256 != installed_sha256:
        update = client.download(assignment, dest_dir=Path("/var/lib/fleet-agent/staging"))
        install(update.path)                           # A/B install is the caller's job

Every refusal raises ``UpdateRejected`` with a reason code (``REASONS``) for ``ota/status``.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

# Reason codes, reported on devices/{id}/ota/status with state "failed".
REASONS = {
    "metadata_expired": "a metadata file is past its expiry (freeze attack, or the device clock is wrong)",
    "metadata_replayed": "a metadata file is older than one already trusted (rollback/replay attack)",
    "metadata_invalid": "a metadata file failed verification (signature, threshold, length, hash, format)",
    "download_failed": "the repository could not be reached or answered with an error",
    "not_in_image_repository": "the image repository does not list the director's target",
    "targets_mismatch": "director and image repository disagree on the target's length or hashes",
    "wrong_device": "the director's target names another device",
    "wrong_hardware": "the director's target is for other hardware, or the image says it is incompatible",
    "too_large": "the target is larger than the size cap",
    "release_counter_lower": "a lower release counter without a signed rollback (downgrade attack)",
    "artifact_invalid": "the downloaded file's length or hash differs from the signed metadata",
    "director_invalid": "the director's targets are malformed (several targets, missing custom fields)",
}


class UpdateRejected(Exception):
    """An update was refused; ``code`` is one of REASONS."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message or REASONS.get(code, '')}")
        self.code = code
        self.message = message or REASONS.get(code, "")


@dataclass(frozen=True)
class TrustConfig:
    """What enrollment gave the device (``update_trust`` in the enrollment response) plus its identity."""

    device_id: str
    hardware_class: str
    device_token: str
    image_root: bytes  # the image repository's root metadata, as received at enrollment
    director_root: bytes
    image_url: str  # e.g. https://fleet.example/ota/image/
    director_url: str
    max_artifact_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class Assignment:
    """What the director assigns, checked against the image repository (nothing downloaded yet)."""

    target_path: str  # "{name}/{version}/{filename}"
    name: str
    version: str
    runtime: str
    length: int
    sha256: str
    release_counter: int
    rollback: bool  # the director signed that going to a lower counter is intended
    image_target: TargetFile  # for download(); from the image repository


@dataclass(frozen=True)
class VerifiedUpdate:
    assignment: Assignment
    path: Path  # the downloaded file, length and sha256 verified


class HttpFetcher(FetcherInterface):
    """ngclient fetcher over urllib3 that can send extra headers (the director's device token).

    urllib3 drops the Authorization header when following a redirect to another host, so the token
    never reaches a storage server that an artifact URL redirects to.
    """

    def __init__(self, headers: dict[str, str] | None = None, timeout: float = 30.0, chunk_size: int = 256 * 1024):
        self._pool = urllib3.PoolManager(headers={"User-Agent": "fleet-agent", **(headers or {})})
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._chunk_size = chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False, timeout=self._timeout, redirect=True)
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError from exc
            raise exceptions.DownloadError(str(exc)) from exc
        if response.status >= 400:
            response.close()
            raise exceptions.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return self._chunks(response)

    def _chunks(self, response) -> Iterator[bytes]:
        try:
            yield from response.stream(self._chunk_size)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError from exc
        finally:
            response.release_conn()


def _reason_of(exc: Exception) -> str:
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return "metadata_expired"
    if isinstance(exc, exceptions.BadVersionNumberError):
        return "metadata_replayed"
    if isinstance(exc, exceptions.RepositoryError):
        return "metadata_invalid"
    return "download_failed"


class UptaneClient:
    """Checks and downloads this device's assigned update. One instance may be reused; each ``check``
    refreshes both repositories from scratch (ngclient's ``refresh`` runs once per Updater)."""

    def __init__(
        self,
        trust: TrustConfig,
        state_dir: Path,
        *,
        image_fetcher: FetcherInterface | None = None,
        director_fetcher: FetcherInterface | None = None,
    ):
        self.trust = trust
        self.state_dir = Path(state_dir)
        self._image_fetcher = image_fetcher or HttpFetcher()
        self._director_fetcher = director_fetcher or HttpFetcher({"Authorization": f"Device {trust.device_token}"})
        self._image_updater: Updater | None = None

    def _updater(self, name: str, root: bytes, url: str, fetcher: FetcherInterface) -> Updater:
        metadata_dir = self.state_dir / name
        metadata_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(metadata_dir, 0o700)
        config = UpdaterConfig(app_user_agent="fleet-agent")
        return Updater(
            str(metadata_dir),
            url,
            target_base_url=url.rstrip("/") + "/targets/",
            fetcher=fetcher,
            config=config,
            bootstrap=root,
        )

    def _refresh(self, updater: Updater) -> None:
        try:
            updater.refresh()
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise UpdateRejected(_reason_of(exc), str(exc)) from exc

    def check(self, *, installed_counter: int | None = None) -> Assignment | None:
        """Refresh both repositories and return the verified assignment, or None when the director
        assigns nothing. ``installed_counter``: the release counter of the model running now."""
        trust = self.trust
        director = self._updater("director", trust.director_root, trust.director_url, self._director_fetcher)
        self._refresh(director)
        # ngclient has no public "list targets"; the trusted set holds what refresh() verified.
        director_targets = director._trusted_set.targets.targets
        if not director_targets:
            return None
        if len(director_targets) != 1:
            raise UpdateRejected("director_invalid", f"{len(director_targets)} targets; expected one")
        (director_target,) = director_targets.values()
        custom = director_target.custom or {}
        try:
            device_id, hardware = custom["device_id"], custom["hardware"]
            counter, rollback = int(custom["release_counter"]), bool(custom.get("rollback", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected("director_invalid", f"custom fields: {exc}") from exc
        if device_id != trust.device_id:
            raise UpdateRejected("wrong_device", f"assigned to {device_id!r}")
        if hardware != trust.hardware_class:
            raise UpdateRejected("wrong_hardware", f"assigned for {hardware!r}")

        image = self._updater("image", trust.image_root, trust.image_url, self._image_fetcher)
        self._refresh(image)
        try:
            image_target = image.get_targetinfo(director_target.path)
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise UpdateRejected(_reason_of(exc), str(exc)) from exc
        if image_target is None:
            raise UpdateRejected("not_in_image_repository", director_target.path)
        if image_target.length != director_target.length or image_target.hashes != director_target.hashes:
            raise UpdateRejected("targets_mismatch", director_target.path)
        image_custom = image_target.custom or {}
        compatible = image_custom.get("hardware") or []
        if compatible and trust.hardware_class not in compatible:
            raise UpdateRejected("wrong_hardware", f"image lists {compatible}")
        if int(image_custom.get("release_counter", -1)) != counter:
            raise UpdateRejected("targets_mismatch", "release counters differ")
        if image_target.length > trust.max_artifact_bytes:
            raise UpdateRejected("too_large", f"{image_target.length} > {trust.max_artifact_bytes} bytes")
        if installed_counter is not None and counter < installed_counter and not rollback:
            raise UpdateRejected("release_counter_lower", f"{counter} < installed {installed_counter}")
        self._image_updater = image
        return Assignment(
            target_path=director_target.path,
            name=str(image_custom.get("name", "")),
            version=str(image_custom.get("version", "")),
            runtime=str(image_custom.get("runtime", "")),
            length=image_target.length,
            sha256=image_target.hashes.get("sha256", ""),
            release_counter=counter,
            rollback=rollback,
            image_target=image_target,
        )

    def download(self, assignment: Assignment, dest_dir: Path) -> VerifiedUpdate:
        """Download the assigned file from the image repository into ``dest_dir`` and verify it.
        Call after ``check`` on the same instance (it uses the image metadata ``check`` verified)."""
        if self._image_updater is None:
            raise RuntimeError("call check() first")
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        destination = dest_dir / f"{assignment.sha256}.partial"
        try:
            self._image_updater.download_target(assignment.image_target, filepath=str(destination))
        except exceptions.LengthOrHashMismatchError as exc:
            destination.unlink(missing_ok=True)
            raise UpdateRejected("artifact_invalid", str(exc)) from exc
        except exceptions.DownloadLengthMismatchError as exc:
            destination.unlink(missing_ok=True)
            raise UpdateRejected("artifact_invalid", str(exc)) from exc
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            destination.unlink(missing_ok=True)
            raise UpdateRejected(_reason_of(exc), str(exc)) from exc
        final = dest_dir / assignment.sha256
        os.replace(destination, final)
        return VerifiedUpdate(assignment=assignment, path=final)


def fetch_update(
    trust: TrustConfig, state_dir: Path, dest_dir: Path, *, installed_counter: int | None = None, **fetchers
) -> VerifiedUpdate | None:
    """check() then download(): the verified file of the assigned update, or None if none is assigned."""
    client = UptaneClient(trust, state_dir, **fetchers)
    assignment = client.check(installed_counter=installed_counter)
    if assignment is None:
        return None
    return client.download(assignment, dest_dir)
