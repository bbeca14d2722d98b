"""The device-side verification (fleet_agent.uptane, on tuf.ngclient.Updater) against the metadata the
platform serves: the round trip, and every attack the two repositories are there to stop."""

import datetime as dt
import json

import pytest
from django.utils import timezone

from fleet_agent.uptane import HttpFetcher, UpdateRejected, UptaneClient, fetch_update
from ota import repository, services
from ota.models import Artifact, DirectorState
from tests.ota.conftest import ACTOR, ClientFetcher, enrolled, release, trust_for

pytestmark = pytest.mark.django_db


def client_for(device, token, tmp_path, *, tamper_image=None, tamper_director=None, director_token=None, **trust):
    return UptaneClient(
        trust_for(device, token, **trust),
        tmp_path / "tuf",
        image_fetcher=ClientFetcher(tamper=tamper_image),
        director_fetcher=ClientFetcher(director_token or token, tamper=tamper_director),
    )


def test_assigned_release_is_verified_and_downloaded(update_repo, tmp_path):
    device, token = enrolled("cam-0001")
    artifact = release(content=b"weights" * 1000)
    services.director_assign(device_ids=[device.id], artifact=artifact)

    client = client_for(device, token, tmp_path)
    assignment = client.check(installed_counter=None)
    assert assignment.target_path == "detector/1.0.0/model.onnx"
    assert (assignment.name, assignment.version, assignment.runtime) == ("detector", "1.0.0", "onnx")
    assert assignment.sha256 == artifact.sha256 and assignment.length == 7000
    assert assignment.release_counter == 1 and assignment.rollback is False
    update = client.download(assignment, tmp_path / "staging")
    assert update.path.read_bytes() == b"weights" * 1000


def test_nothing_assigned_means_no_update(update_repo, tmp_path):
    device, token = enrolled("cam-0002")
    release()
    assert (
        fetch_update(
            trust_for(device, token),
            tmp_path / "tuf",
            tmp_path / "dl",
            image_fetcher=ClientFetcher(),
            director_fetcher=ClientFetcher(token),
        )
        is None
    )


def test_consistent_snapshot_urls_are_versioned(update_repo, tmp_path):
    device, token = enrolled("cam-0003")
    artifact = release()
    services.director_assign(device_ids=[device.id], artifact=artifact)
    image_fetcher = ClientFetcher()
    client = UptaneClient(
        trust_for(device, token), tmp_path / "tuf", image_fetcher=image_fetcher, director_fetcher=ClientFetcher(token)
    )
    client.download(client.check(), tmp_path / "dl")
    assert "/ota/image/timestamp.json" in image_fetcher.urls
    assert any(url.endswith(".snapshot.json") and url.split("/")[-1][0].isdigit() for url in image_fetcher.urls)
    assert f"/ota/image/targets/detector/1.0.0/{artifact.sha256}.model.onnx" in image_fetcher.urls


def test_tampered_artifact_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0004")
    services.director_assign(device_ids=[device.id], artifact=release())

    def flip_artifact_byte(path, body):
        return (bytes([body[0] ^ 1]) + body[1:]) if "/targets/" in path else body

    client = client_for(device, token, tmp_path, tamper_image=flip_artifact_byte)
    assignment = client.check()
    with pytest.raises(UpdateRejected) as caught:
        client.download(assignment, tmp_path / "dl")
    assert caught.value.code == "artifact_invalid"
    assert not list((tmp_path / "dl").iterdir())


def test_tampered_targets_metadata_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0005")
    artifact = release()
    services.director_assign(device_ids=[device.id], artifact=artifact)

    def swap_hash(path, body):
        if path.endswith(".targets.json"):
            return body.replace(artifact.sha256.encode(), b"0" * 64)
        return body

    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, tamper_image=swap_hash).check()
    assert caught.value.code == "metadata_invalid"


def test_tampered_director_metadata_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0006")
    services.director_assign(device_ids=[device.id], artifact=release())

    def other_device(path, body):
        return body.replace(b'"cam-0006"', b'"cam-9999"') if path.endswith(".targets.json") else body

    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, tamper_director=other_device).check()
    assert caught.value.code == "metadata_invalid"


def test_expired_timestamp_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0007")
    services.director_assign(device_ids=[device.id], artifact=release())
    # A freeze attack: the newest timestamp a mirror offers was signed two days ago and has expired.
    services.timestamp_refresh(now=timezone.now() - dt.timedelta(days=2), force=True)
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path).check()
    assert caught.value.code == "metadata_expired"


def test_replayed_older_director_metadata_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0008")
    old = release(version="1.0.0")
    services.director_assign(device_ids=[device.id], artifact=old)
    recorded = {}

    def record(path, body):
        recorded.setdefault(path.rsplit("/", 1)[-1], body)
        return body

    assert client_for(device, token, tmp_path, tamper_director=record).check().version == "1.0.0"
    services.director_assign(device_ids=[device.id], artifact=release(version="1.1.0"))
    assert client_for(device, token, tmp_path).check().version == "1.1.0"

    def replay(path, body):
        name = path.rsplit("/", 1)[-1]
        return recorded.get(name, body) if name == "timestamp.json" else body

    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, tamper_director=replay).check()
    assert caught.value.code == "metadata_replayed"


def test_assignment_for_another_device_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0009")
    other, other_token = enrolled("cam-0010")
    services.director_assign(device_ids=[other.id], artifact=release())
    # A man in the middle answers this device with the other device's (validly signed) director files.
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, director_token=other_token).check()
    assert caught.value.code == "wrong_device"


def test_assignment_for_other_hardware_is_rejected(update_repo, tmp_path):
    device, token = enrolled("cam-0011", hardware="rpi4")
    services.director_assign(device_ids=[device.id], artifact=release())
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, hardware_class="jetson").check()
    assert caught.value.code == "wrong_hardware"


def test_lower_release_counter_needs_a_signed_rollback(update_repo, tmp_path):
    device, token = enrolled("cam-0012")
    v1 = release(version="1.0.0")
    release(version="2.0.0")
    services.director_assign(device_ids=[device.id], artifact=v1)
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path).check(installed_counter=2)
    assert caught.value.code == "release_counter_lower"
    services.director_assign(device_ids=[device.id], artifact=v1, rollback=True)
    assignment = client_for(device, token, tmp_path).check(installed_counter=2)
    assert assignment.rollback is True and assignment.release_counter == 1


def test_size_cap_is_enforced_before_download(update_repo, tmp_path):
    device, token = enrolled("cam-0013")
    services.director_assign(device_ids=[device.id], artifact=release(content=b"x" * 5000))
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path, max_artifact_bytes=4999).check()
    assert caught.value.code == "too_large"


def test_director_and_image_must_agree_on_hashes(update_repo, tmp_path):
    device, token = enrolled("cam-0014")
    real = release()
    # A compromised director key signs the right path with other content: the image repository disagrees.
    forged = Artifact(
        name=real.name,
        version=real.version,
        filename=real.filename,
        length=real.length,
        sha256="ab" * 32,
        release_counter=1,
    )
    files = repository.director_sign(
        device_id=device.id, hardware="rpi4", artifact=forged, rollback=False, version=1, now=timezone.now()
    )
    DirectorState.objects.create(
        device=device,
        artifact=real,
        version=1,
        dirty=False,
        timestamp_json=files.timestamp,
        snapshot_json=files.snapshot,
        targets_json=files.targets,
        expires_at=files.expires_at,
    )
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path).check()
    assert caught.value.code == "targets_mismatch"


def test_revoked_release_is_no_longer_verifiable(update_repo, tmp_path):
    device, token = enrolled("cam-0015")
    artifact = release()
    services.director_assign(device_ids=[device.id], artifact=artifact)
    services.artifact_revoke(actor=ACTOR, artifact=artifact, reason="bad weights")
    with pytest.raises(UpdateRejected) as caught:
        client_for(device, token, tmp_path).check()
    assert caught.value.code == "not_in_image_repository"


@pytest.mark.parametrize(
    ("repo", "role"),
    [("image", "targets"), ("image", "timestamp"), ("image", "root"), ("director", "director"), ("director", "root")],
)
def test_device_with_enrollment_roots_follows_key_rotation(update_repo, tmp_path, repo, role):
    device, token = enrolled("cam-0016")
    services.director_assign(device_ids=[device.id], artifact=release())
    trust = trust_for(device, token)  # the version-1 roots the device got at enrollment
    assert client_for(device, token, tmp_path).check() is not None
    services.key_rotate(actor=ACTOR, repository_name=repo, role=role)
    client = UptaneClient(trust, tmp_path / "tuf", image_fetcher=ClientFetcher(), director_fetcher=ClientFetcher(token))
    assert client.check().version == "1.0.0"
    root_dir = tmp_path / "tuf" / repo / "root_history"
    assert (root_dir / "2.root.json").exists()


def test_director_needs_the_device_token(update_repo, client):
    enrolled("cam-0017")
    response = client.get("/ota/director/timestamp.json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "device_token_invalid"
    response = client.get("/ota/director/timestamp.json", HTTP_AUTHORIZATION="Device fdt_not-a-token")
    assert response.status_code == 401


def test_director_serves_only_the_callers_own_metadata(update_repo, client):
    _device_a, token_a = enrolled("cam-0018")
    device_b, _token_b = enrolled("cam-0019")
    services.director_assign(device_ids=[device_b.id], artifact=release())
    timestamp = client.get("/ota/director/timestamp.json", HTTP_AUTHORIZATION=f"Device {token_a}").json()
    version = timestamp["signed"]["version"]
    targets = client.get(f"/ota/director/{version}.targets.json", HTTP_AUTHORIZATION=f"Device {token_a}").json()
    assert targets["signed"]["targets"] == {}  # A is assigned nothing; B's assignment is not visible to A
    stale = client.get(f"/ota/director/{version + 5}.targets.json", HTTP_AUTHORIZATION=f"Device {token_a}")
    assert stale.status_code == 404


def test_unknown_repository_files_are_404(update_repo, client):
    assert client.get("/ota/image/targets.json").status_code == 404  # consistent snapshots: versioned only
    assert client.get("/ota/image/7.timestamp.json").status_code == 404
    assert client.get("/ota/image/1.root.json").status_code == 200
    assert client.get("/ota/image/targets/detector/1.0.0/" + "a" * 64 + ".model.onnx").status_code == 404


def test_round_trip_over_real_http(live_server, tmp_path):
    """The same verification with the agent's own urllib3 fetcher against the live server."""
    services.repositories_init(actor=ACTOR)
    device, token = enrolled("cam-0020")
    services.director_assign(device_ids=[device.id], artifact=release(content=b"real http" * 100))
    bootstrap_urls = {"image_url": f"{live_server.url}/ota/image/", "director_url": f"{live_server.url}/ota/director/"}
    update = fetch_update(trust_for(device, token, **bootstrap_urls), tmp_path / "tuf", tmp_path / "dl")
    assert update.path.read_bytes() == b"real http" * 100
    with pytest.raises(UpdateRejected) as caught:
        fetch_update(
            trust_for(device, "fdt_wrong", **bootstrap_urls),
            tmp_path / "tuf2",
            tmp_path / "dl2",
            director_fetcher=HttpFetcher({"Authorization": "Device fdt_wrong"}),
        )
    assert caught.value.code == "download_failed"
    assert json.loads(trust_for(device, token).image_root)["signed"]["_type"] == "root"
