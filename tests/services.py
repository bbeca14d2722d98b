"""Real services for the test run: PostgreSQL, Redis and Mosquitto.

Loaded as a pytest plugin (``-p tests.services``) so that it runs before Django's settings are read:
it picks free loopback ports and points the settings at them through the environment, exactly as a
deployment would. The servers themselves start lazily, once per session, from the binaries on PATH
(or Debian's /usr/lib/postgresql/*/bin). PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` user on a data directory that user owns.
"""

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Re-exported: benchmarks and tests reach these through this module.
from tests.processes import PG_USER, PostgresServer, as_service_user, find_binary, free_port, wait_for_port

__all__ = ["PostgresServer", "as_service_user", "find_binary", "free_port", "wait_for_port"]

RUN_DIR = Path(tempfile.mkdtemp(prefix="fleet-test-"))
RUN_DIR.chmod(0o755)  # the postgres and mosquitto users must reach their folders below it


PG_PORT = free_port()
REDIS_PORT = free_port()
MQTT_DEVICE_PORT = free_port()
MQTT_PLATFORM_PORT = free_port()
BROKER_DIR = RUN_DIR / "broker"

# Settings come from the environment: point them at the services of this run before Django loads them.
os.environ.update(
    {
        "DATABASE_URL": f"postgres://{PG_USER}@127.0.0.1:{PG_PORT}/fleet",
        "FLEET_SECRET_KEY": secrets.token_urlsafe(48),
        "FLEET_KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "FLEET_STATE_DIR": str(RUN_DIR / "state"),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "DATABASE_CONN_MAX_AGE": "0",
        "MQTT_URL": f"mqtts://127.0.0.1:{MQTT_DEVICE_PORT}",
        "MQTT_PLATFORM_URL": f"mqtts://127.0.0.1:{MQTT_PLATFORM_PORT}",
        "MQTT_TLS_DIR": str(BROKER_DIR),
    }
)
os.environ.pop("FLEET_DEBUG", None)


# Throwaway data: durability off for speed. Fault tests restart the server, they don't crash the OS.
TEST_POSTGRES_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"


def _start_postgres() -> PostgresServer:
    return PostgresServer.create(data_dir=RUN_DIR / "pgdata", port=PG_PORT, settings=TEST_POSTGRES_SETTINGS)


@pytest.fixture(scope="session")
def postgres_server():
    server = _start_postgres()
    yield server
    try:
        server.stop(mode="immediate")
    except subprocess.CalledProcessError:
        pass


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """Always up: services enqueue Celery tasks on commit (e.g. the CRL refresh after a revocation), and
    with CELERY_BROKER_URL pointing here they land in a real Redis instead of failing to connect."""
    process = subprocess.Popen(
        [
            find_binary("redis-server"),
            "--port",
            str(REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(RUN_DIR),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(REDIS_PORT)
    yield RedisServer(port=REDIS_PORT, process=process)
    process.terminate()
    process.wait(timeout=10)


@dataclass
class MosquittoBroker:
    """The real broker, configured by the same code and template as production and `make run`."""

    config: Path
    device_port: int
    platform_port: int
    ca_row: dict
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(RUN_DIR / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.device_port)
        wait_for_port(self.platform_port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, including the revocation list."""
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def ensure_ca_in_database(self) -> None:
        """Tests roll back or flush the database; put the broker's device CA back if it is gone, so that
        devices enrolled in a test get certificates the broker accepts."""
        from devices.models import CertificateAuthority

        if not CertificateAuthority.objects.filter(certificate_pem=self.ca_row["certificate_pem"]).exists():
            CertificateAuthority.objects.all().delete()
            CertificateAuthority.objects.create(**self.ca_row)


@pytest.fixture(scope="session")
def mosquitto_broker(django_db_setup, django_db_blocker):
    from devices.models import CertificateAuthority
    from fleet.broker import broker_setup

    with django_db_blocker.unblock():
        config = broker_setup(
            state_dir=BROKER_DIR,
            server_names=["localhost", "127.0.0.1"],
            device_port=MQTT_DEVICE_PORT,
            platform_port=MQTT_PLATFORM_PORT,
            bind_address="127.0.0.1",
        )
        row = CertificateAuthority.objects.get(active=True)
        ca_row = {"name": row.name, "certificate_pem": row.certificate_pem, "encrypted_key_pem": row.encrypted_key_pem}
    broker = MosquittoBroker(
        config=config, device_port=MQTT_DEVICE_PORT, platform_port=MQTT_PLATFORM_PORT, ca_row=ca_row
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mqtt_broker(mosquitto_broker, db) -> MosquittoBroker:
    """The broker, for a test in a rolled-back transaction (devices it enrolls need not be seen by others)."""
    mosquitto_broker.ensure_ca_in_database()
    return mosquitto_broker


@pytest.fixture
def mqtt_broker_tx(mosquitto_broker, transactional_db) -> MosquittoBroker:
    """The broker, for a test whose data must be committed (a worker in another process reads it)."""
    mosquitto_broker.ensure_ca_in_database()
    return mosquitto_broker


def pytest_unconfigure(config):
    shutil.rmtree(RUN_DIR, ignore_errors=True)
