"""The REST API of updates: uploads, rollouts and their workflow actions, keys; roles and error bodies."""

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fleet.models import AuditEvent
from ota.models import Artifact, Repository, RepositoryMetadata, RolloutState, SigningKey
from tests.factories import make_token
from tests.ota.conftest import release
from tests.ota.test_rollouts import STAGES, make_devices

pytestmark = pytest.mark.django_db


def upload(api, name="detector", version="1.0.0", content=b"onnx" * 100, **extra):
    body = {
        "file": SimpleUploadedFile("model.onnx", content),
        "name": name,
        "version": version,
        "runtime": "onnx",
        "hardware_classes": ["rpi4"],
        **extra,
    }
    return api.post("/api/v1/ota/artifacts/", body, format="multipart")


def test_operator_uploads_a_release_that_is_signed_into_the_image_repository(operator_api, update_repo, client):
    response = upload(operator_api)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["length"] == 400 and body["release_counter"] == 1
    assert body["target_path"] == "detector/1.0.0/model.onnx"
    targets = (
        RepositoryMetadata.objects.filter(repository=Repository.IMAGE, role="targets").order_by("-version").first()
    )
    signed = client.get(f"/ota/image/{targets.version}.targets.json").json()["signed"]
    assert signed["targets"]["detector/1.0.0/model.onnx"]["hashes"]["sha256"] == body["sha256"]
    assert signed["targets"]["detector/1.0.0/model.onnx"]["custom"]["hardware"] == ["rpi4"]
    served = client.get(f"/ota/image/targets/detector/1.0.0/{body['sha256']}.model.onnx")
    assert b"".join(served.streaming_content) == b"onnx" * 100
    assert AuditEvent.objects.filter(action="ota.release.create").exists()


def test_duplicate_release_is_refused(operator_api, update_repo):
    assert upload(operator_api).status_code == 201
    response = upload(operator_api)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "artifact_exists"


def test_oversized_release_is_refused(operator_api, update_repo, settings):
    settings.OTA_MAX_ARTIFACT_BYTES = 100
    response = upload(operator_api, content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "artifact_too_large"
    assert not Artifact.objects.exists()


def test_bad_upload_input_is_a_400_with_fields(operator_api, update_repo):
    response = operator_api.post("/api/v1/ota/artifacts/", {"name": "../etc", "version": ""}, format="multipart")
    assert response.status_code == 400
    assert {"file", "name", "version"} <= set(response.json()["error"]["fields"])


def test_viewer_cannot_upload_or_act(viewer_api, update_repo):
    assert upload(viewer_api).status_code == 403
    assert viewer_api.get("/api/v1/ota/artifacts/").status_code == 200
    assert viewer_api.post("/api/v1/ota/keys/rotate/", {"repository": "image", "role": "targets"}).status_code == 403


def test_revoke_is_admin_only(operator_api, admin_api, update_repo):
    artifact = release()
    assert operator_api.post(f"/api/v1/ota/artifacts/{artifact.pk}/revoke/", {"reason": "x"}).status_code == 403
    response = admin_api.post(f"/api/v1/ota/artifacts/{artifact.pk}/revoke/", {"reason": "bad weights"}, format="json")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None


def test_key_rotation_through_the_api(admin_api, update_repo):
    before = SigningKey.objects.get(repository="image", role="targets", active=True).keyid
    response = admin_api.post("/api/v1/ota/keys/rotate/", {"repository": "image", "role": "targets"}, format="json")
    assert response.status_code == 200, response.json()
    after = SigningKey.objects.get(repository="image", role="targets", active=True).keyid
    assert after != before
    bad = admin_api.post("/api/v1/ota/keys/rotate/", {"repository": "image", "role": "director"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_role"
    assert admin_api.get("/api/v1/ota/keys/").status_code == 200


def test_rollout_workflow_through_the_api(operator_api, update_repo):
    make_devices(50)
    artifact = release()
    stages = [{"share": s["share"], "soak_seconds": s["soak_seconds"]} for s in STAGES]
    dry = operator_api.post("/api/v1/ota/rollouts/dry-run/", {"artifact": artifact.pk, "stages": stages}, format="json")
    assert dry.status_code == 200 and dry.json()["targeted"] == 50
    created = operator_api.post(
        "/api/v1/ota/rollouts/",
        {"name": "detector 1", "artifact": artifact.pk, "stages": STAGES, "on_failure": "rollback"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    rid = created.json()["id"]
    for action, state in [("start", "running"), ("pause", "paused"), ("resume", "running"), ("advance", "running")]:
        response = operator_api.post(f"/api/v1/ota/rollouts/{rid}/{action}/")
        assert response.status_code == 200, response.json()
        assert response.json()["state"] == state
    assert operator_api.get(f"/api/v1/ota/rollouts/{rid}/").json()["current_stage"] == 1
    devices = operator_api.get(f"/api/v1/ota/rollouts/{rid}/devices/").json()["results"]
    assert len(devices) == 50
    response = operator_api.post(f"/api/v1/ota/rollouts/{rid}/rollback/", {"reason": "looks wrong"}, format="json")
    assert response.json()["state"] == RolloutState.ROLLED_BACK
    again = operator_api.post(f"/api/v1/ota/rollouts/{rid}/start/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_rollout_input_is_validated(operator_api, update_repo):
    artifact = release()
    bad = operator_api.post(
        "/api/v1/ota/rollouts/",
        {"name": "x", "artifact": artifact.pk, "stages": [{"share": 0.5}, {"share": 0.2}]},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_stages"
    missing = operator_api.post("/api/v1/ota/rollouts/", {"name": "x", "artifact": 999, "stages": []}, format="json")
    assert missing.status_code == 400
    assert operator_api.post("/api/v1/ota/rollouts/12345/start/").status_code == 404


def test_abort_through_the_api(operator_api, update_repo):
    make_devices(10)
    artifact = release()
    rid = operator_api.post(
        "/api/v1/ota/rollouts/", {"name": "x", "artifact": artifact.pk, "stages": [{"share": 1.0}]}, format="json"
    ).json()["id"]
    operator_api.post(f"/api/v1/ota/rollouts/{rid}/start/")
    assert operator_api.post(f"/api/v1/ota/rollouts/{rid}/abort/").json()["state"] == "aborted"


def test_enrollment_returns_both_trusted_roots_and_urls(anon_api):
    from fleet_agent.identity import build_csr_pem, generate_private_key

    body = {"token": make_token(), "csr": build_csr_pem(generate_private_key(), "cam-enroll"), "hardware_class": "rpi4"}
    response = anon_api.post("/api/v1/enroll/", body, format="json")
    assert response.status_code == 201
    trust = response.json()["update_trust"]
    assert trust["image_url"].endswith("/ota/image/") and trust["director_url"].endswith("/ota/director/")
    import json

    image_root = json.loads(trust["image_root"])["signed"]
    director_root = json.loads(trust["director_root"])["signed"]
    assert image_root["_type"] == director_root["_type"] == "root"
    assert image_root["consistent_snapshot"] is True
    assert image_root["roles"]["root"]["threshold"] == 2 and len(image_root["roles"]["root"]["keyids"]) == 3
    assert set(image_root["keys"]).isdisjoint(director_root["keys"])


def test_enrollment_after_a_root_rotation_returns_the_newest_root_of_each_repository(anon_api, update_repo):
    import json

    from fleet.services import Actor
    from fleet_agent.identity import build_csr_pem, generate_private_key
    from ota import services

    services.key_rotate(actor=Actor.system("tests"), repository_name=Repository.IMAGE, role="root")
    body = {"token": make_token(), "csr": build_csr_pem(generate_private_key(), "cam-rotated")}
    trust = anon_api.post("/api/v1/enroll/", body, format="json").json()["update_trust"]

    def stored(repository: str, version: int) -> str:
        return bytes(
            RepositoryMetadata.objects.get(repository=repository, role="root", version=version).content
        ).decode()

    assert json.loads(trust["image_root"])["signed"]["version"] == 2
    assert trust["image_root"] == stored(Repository.IMAGE, 2)
    assert json.loads(trust["director_root"])["signed"]["version"] == 1
    assert trust["director_root"] == stored(Repository.DIRECTOR, 1)


def test_timestamp_is_resigned_before_it_expires(update_repo):
    from django.utils import timezone

    from ota import services

    latest = RepositoryMetadata.objects.filter(repository="image", role="timestamp").order_by("-version").first()
    assert services.timestamp_refresh(now=timezone.now()) is False  # fresh: nothing to do
    assert services.timestamp_refresh(now=timezone.now() + dt.timedelta(hours=13)) is True
    newest = RepositoryMetadata.objects.filter(repository="image", role="timestamp").order_by("-version").first()
    assert newest.version == latest.version + 1 and newest.expires_at > latest.expires_at
