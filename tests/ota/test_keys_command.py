"""Key management commands: offline root keys with a threshold, rotation that needs them, revocation."""

import pytest
from django.core.management import CommandError, call_command

from fleet_agent.uptane import UptaneClient
from ota import services
from ota.models import Artifact, SigningKey
from tests.ota.conftest import ClientFetcher, enrolled, release, trust_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def offline_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("OTA_ROOT_PASSPHRASE", "correct horse battery staple")
    export = tmp_path / "root-keys"
    call_command(
        "ota_keys", "init", "--offline-root", "--export-dir", str(export), "--root-keys", "3", "--root-threshold", "2"
    )
    return export


def test_offline_root_keys_are_exported_and_not_kept(offline_repo):
    files = sorted(offline_repo.iterdir())
    assert len(files) == 6  # 3 image + 3 director
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert b"ENCRYPTED PRIVATE KEY" in files[0].read_bytes()
    roots = SigningKey.objects.filter(role="root")
    assert roots.count() == 6 and not any(row.online for row in roots)
    online = SigningKey.objects.exclude(role="root")
    assert all(row.online and "ENCRYPTED" in row.encrypted_private_pem for row in online)


def test_rotation_needs_a_threshold_of_offline_root_keys(offline_repo, admin_api, tmp_path):
    device, token = enrolled("cam-keys-1")
    services.director_assign(device_ids=[device.id], artifact=release())
    trust = trust_for(device, token)
    response = admin_api.post("/api/v1/ota/keys/rotate/", {"repository": "image", "role": "targets"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "root_threshold_not_met"
    assert (
        admin_api.post("/api/v1/ota/keys/rotate/", {"repository": "image", "role": "root"}, format="json").status_code
        == 409
    )

    image_keys = sorted(offline_repo.glob("image-root-*.pem"))
    with pytest.raises(CommandError, match="root_threshold_not_met"):
        call_command(
            "ota_keys", "rotate", "--repository", "image", "--role", "targets", "--root-key", str(image_keys[0])
        )
    call_command(
        "ota_keys",
        "rotate",
        "--repository",
        "image",
        "--role",
        "targets",
        "--root-key",
        str(image_keys[0]),
        "--root-key",
        str(image_keys[1]),
    )
    # Root rotation: old threshold and new keys sign; the new keys are exported.
    new_dir = tmp_path / "new-root"
    call_command(
        "ota_keys",
        "rotate",
        "--repository",
        "image",
        "--role",
        "root",
        "--root-key",
        str(image_keys[1]),
        "--root-key",
        str(image_keys[2]),
        "--export-dir",
        str(new_dir),
    )
    assert len(list(new_dir.iterdir())) == 3
    client = UptaneClient(trust, tmp_path / "tuf", image_fetcher=ClientFetcher(), director_fetcher=ClientFetcher(token))
    assert client.check().version == "1.0.0"  # the enrollment root chains to root v3


def test_revoke_command_removes_the_release(update_repo, capsys):
    release(version="3.0.0")
    call_command("ota_release", "revoke", "detector", "3.0.0", "--reason", "bad")
    assert Artifact.objects.get(version="3.0.0").revoked_at is not None
    with pytest.raises(CommandError):
        call_command("ota_release", "revoke", "detector", "9.9.9")


def test_init_twice_is_refused(update_repo):
    with pytest.raises(CommandError, match="repository_initialized"):
        call_command("ota_keys", "init")
