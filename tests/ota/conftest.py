"""Fixtures of the update tests: initialised repositories, releases, enrolled devices, and ngclient
fetchers that go through Django's test client (or tamper with what it returns, like a network attacker)."""

from collections.abc import Callable, Iterator

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from fleet.celery import app as celery_app
from fleet.services import Actor
from fleet_agent.uptane import TrustConfig
from ota import selectors, services
from ota.models import Artifact
from tests.factories import make_device

ACTOR = Actor.system("tests")


@pytest.fixture(autouse=True)
def celery_eager():
    """Tasks enqueued on commit run in-process (no Redis worker in these tests)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Without the Mosquitto fixture, record the retained pointers instead of publishing them."""
    published: list[tuple[str, bytes]] = []
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: published.extend(messages))
    return published


@pytest.fixture
def update_repo(db):
    services.repositories_init(actor=ACTOR, root_keys=3, root_threshold=2)


def release(name="detector", version="1.0.0", content: bytes | None = None, hardware=("rpi4",), **kwargs) -> Artifact:
    content = content if content is not None else f"model {name} {version}".encode() * 50
    upload = SimpleUploadedFile("model.onnx", content)
    return services.artifact_upload(
        actor=ACTOR,
        upload=upload,
        name=name,
        version=version,
        runtime="onnx",
        hardware_classes=list(hardware),
        **kwargs,
    )


def enrolled(device_id: str, hardware: str = "rpi4", **kwargs):
    """(device, device token) of a device enrolled for real."""
    result, _key = make_device(device_id, hardware_class=hardware, runtime="onnx", **kwargs)
    return result.device, result.device_token


class ClientFetcher(FetcherInterface):
    """ngclient fetcher over Django's test client (follows the artifact redirect, sends the device token)."""

    def __init__(self, token: str | None = None, tamper: Callable[[str, bytes], bytes] | None = None):
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Device {token}"} if token else {}
        self.tamper = tamper
        self.urls: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = url.split("://", 1)[-1].split("/", 1)[1]
        self.urls.append("/" + path)
        response = self.client.get("/" + path, **self.headers)
        if response.status_code >= 400:
            raise exceptions.DownloadHTTPError(f"HTTP {response.status_code}", response.status_code)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if hasattr(response, "file_to_stream") and response.file_to_stream:
            response.file_to_stream.close()
        if self.tamper is not None:
            body = self.tamper("/" + path, body)
        return iter([body])


def trust_for(device, token: str, **overrides) -> TrustConfig:
    bootstrap = selectors.update_trust_bootstrap()
    values = {
        "device_id": device.id,
        "hardware_class": device.hardware_class,
        "device_token": token,
        "image_root": bootstrap["image_root"].encode(),
        "director_root": bootstrap["director_root"].encode(),
        "image_url": bootstrap["image_url"],
        "director_url": bootstrap["director_url"],
    } | overrides
    return TrustConfig(**values)
