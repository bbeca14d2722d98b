"""The two TUF repositories over HTTP (plain Django views: the director is the platform's hottest
device endpoint, so it skips DRF's machinery and answers from one cached row).

Image repository (public: everything in it is signed, and model files are not secret):
    GET /ota/image/{v}.root.json | timestamp.json | {v}.snapshot.json | {v}.targets.json
    GET /ota/image/targets/{name}/{version}/{sha256}.{filename}   (302 to a presigned URL on S3)
Director (``Authorization: Device <token>``; the files are those of the calling device, no id in the URL,
so a device cannot ask for another's):
    GET /ota/director/{v}.root.json | timestamp.json | {v}.snapshot.json | {v}.targets.json
"""

import re

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from devices.models import DeviceStatus
from devices.services import DEVICE_TOKEN_PREFIX, device_authenticate_token, hash_secret
from ota import repository, selectors, services
from ota.models import Artifact, Repository, RepositoryMetadata

_METADATA_RE = re.compile(r"^(?:(?P<version>[1-9][0-9]{0,9})\.)?(?P<role>root|timestamp|snapshot|targets)\.json$")
IMMUTABLE = "public, max-age=31536000, immutable"


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _json(content: bytes, *, cache: str) -> HttpResponse:
    response = HttpResponse(content, content_type="application/json")
    response["Cache-Control"] = cache
    return response


def _parse(filename: str) -> tuple[str, int | None] | None:
    match = _METADATA_RE.match(filename)
    if match is None:
        return None
    role, version = match["role"], match["version"]
    # Consistent snapshots: only timestamp is fetched unversioned; root is always fetched by version.
    if (role == "timestamp") != (version is None) and role != "root":
        return None
    return role, int(version) if version else None


def _shared_file(repo: str, role: str, version: int | None) -> HttpResponse:
    rows = RepositoryMetadata.objects.filter(repository=repo, role=role)
    row = rows.filter(version=version).first() if version else rows.order_by("-version").first()
    if row is None:
        return _error(404, "not_found", f"No {role} metadata at that version.")
    return _json(bytes(row.content), cache=IMMUTABLE if version else "no-cache")


@require_GET
def image_metadata(request, filename: str):
    parsed = _parse(filename)
    if parsed is None:
        return _error(404, "not_found", "Unknown metadata file.")
    role, version = parsed
    return _shared_file(Repository.IMAGE, role, version)


@require_GET
def image_target(request, name: str, version: str, hashed: str):
    sha256, _, filename = hashed.partition(".")
    artifact = Artifact.objects.filter(
        name=name, version=version, sha256=sha256, filename=filename, revoked_at__isnull=True
    ).first()
    if artifact is None:
        return _error(404, "not_found", "No such released artifact.")
    url = default_storage.url(artifact.storage_path)
    if url.startswith(("http://", "https://")):
        return HttpResponseRedirect(url)  # S3: a presigned URL, valid STORAGE_S3_URL_EXPIRY_SECONDS
    response = FileResponse(default_storage.open(artifact.storage_path, "rb"), content_type="application/octet-stream")
    response["Content-Length"] = str(artifact.length)
    response["Cache-Control"] = IMMUTABLE
    return response


def _device(request):
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "device" or not secret:
        return None
    return device_authenticate_token(secret.strip())


def _unauthorized() -> JsonResponse:
    response = _error(401, "device_token_invalid", "Director metadata needs Authorization: Device <token>.")
    response["WWW-Authenticate"] = "Device"
    return response


def _cached_director_file(request, role: str, version: int | None) -> HttpResponse | None:
    """Answer from the device's signed files in one query when they are current (the common case)."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "device" or not secret.startswith(DEVICE_TOKEN_PREFIX):
        return _unauthorized()
    found = selectors.director_cached(token_hash=hash_secret(secret), role=role)
    if found is None or found[1] == DeviceStatus.REVOKED:
        return _unauthorized()
    _device_id, _status, cached = found
    if cached is None:
        return None
    content, current_version, dirty, expires_at = cached
    if repository.director_stale(dirty=dirty, signed=content is not None, expires_at=expires_at, now=timezone.now()):
        return None
    if role == "timestamp":
        return _json(bytes(content), cache="no-store")
    if version != current_version:
        return None
    return _json(bytes(content), cache="private, no-cache")


@require_GET
def director_metadata(request, filename: str):
    parsed = _parse(filename)
    if parsed is None:
        return _error(404, "not_found", "Unknown metadata file.")
    role, version = parsed
    if role != "root":
        cached = _cached_director_file(request, role, version)
        if cached is not None:
            return cached
    device = _device(request)
    if device is None:
        return _unauthorized()
    if role == "root":
        return _shared_file(Repository.DIRECTOR, role, version)
    state = services.director_files(device=device)
    if role == "timestamp":
        return _json(bytes(state.timestamp_json), cache="no-store")
    if version != state.version:
        # Only the current version is kept per device; a client that raced a re-signing fetches
        # timestamp.json again on its next refresh.
        return _error(404, "not_found", f"This device's director {role} is at version {state.version}.")
    content = state.snapshot_json if role == "snapshot" else state.targets_json
    return _json(bytes(content), cache="private, no-cache")
