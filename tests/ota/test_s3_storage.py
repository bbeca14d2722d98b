"""Artifacts on S3 (django-storages/boto3) against a real S3-compatible server on loopback (moto_server
as its own process): the upload lands in the bucket and devices download through a presigned redirect."""

import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from django.core.files.storage import default_storage

from fleet.services import Actor
from fleet_agent.uptane import fetch_update
from ota import services
from tests.ota.conftest import enrolled, release, trust_for
from tests.services import free_port, wait_for_port


@pytest.fixture(scope="module")
def s3_server():
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_storage(s3_server, settings):
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test-secret"}
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **credentials).create_bucket(Bucket="artifacts")
    settings.STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "artifacts",
                "endpoint_url": s3_server,
                "region_name": "us-east-1",
                "access_key": "test",
                "secret_key": "test-secret",
                "querystring_expire": 300,
            },
        },
        "staticfiles": settings.STORAGES["staticfiles"],
    }
    return s3_server


def test_release_is_stored_in_s3_and_served_by_presigned_redirect(s3_storage, db, client):
    services.repositories_init(actor=Actor.system("tests"))
    artifact = release(content=b"s3 weights" * 100)
    assert artifact.storage_path.startswith("artifacts/detector/1.0.0/")
    with default_storage.open(artifact.storage_path, "rb") as stored:
        assert stored.read() == b"s3 weights" * 100
    response = client.get(f"/ota/image/targets/detector/1.0.0/{artifact.sha256}.model.onnx")
    assert response.status_code == 302
    assert response["Location"].startswith(s3_storage) and "Signature" in response["Location"]


def test_device_downloads_from_s3_through_the_live_server(s3_storage, live_server, tmp_path):
    services.repositories_init(actor=Actor.system("tests"))
    device, token = enrolled("cam-s3-01")
    services.director_assign(device_ids=[device.id], artifact=release(content=b"via s3" * 200))
    urls = {"image_url": f"{live_server.url}/ota/image/", "director_url": f"{live_server.url}/ota/director/"}
    update = fetch_update(trust_for(device, token, **urls), tmp_path / "tuf", tmp_path / "dl")
    assert update.path.read_bytes() == b"via s3" * 200
