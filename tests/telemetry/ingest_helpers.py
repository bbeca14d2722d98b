"""Helpers of the end-to-end ingest tests: worker processes, device publishers, waiting for rows."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

from fleet_agent import schemas
from tests.mqtt_helpers import TestClient, connect_client

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


@dataclass
class WorkerProcess:
    client_id: str
    database_url: str
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self) -> "WorkerProcess":
        env = os.environ | {"DATABASE_URL": self.database_url, "FLEET_LOG_LEVEL": "INFO"}
        self.log_path = Path(settings.STATE_DIR) / f"{self.client_id}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [sys.executable, MANAGE, "ingest", "--client-id", self.client_id, *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_connected(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "connected as" in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"the worker did not connect in {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 30) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=timeout)
        return self.process.returncode if self.process else 0

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def forget_session(client_id: str) -> None:
    """Remove a worker's persistent session from the broker (connect with a clean session, leave), so
    that a later test's shared subscription does not route messages to a session nobody reads."""
    from tests.telemetry.test_broker_security import connect_platform

    client = connect_platform("platform-ingest", client_id)
    client.close()


def new_client_id(prefix: str = "ingest-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def device_client(enrollment, key) -> TestClient:
    client = connect_client(client_id=enrollment.device.id, cert_pem=enrollment.certificate_pem, key=key)
    assert client.connected.is_set() and client.connect_reason == 0, "the device could not connect"
    return client


def telemetry_payload(seq: int, records: int = 1) -> bytes:
    recs = [
        schemas.inference_record(task="detect", model="yolo-n", model_version="1.0.0", latency_ms=10.0 + i)
        for i in range(records)
    ]
    return schemas.encode(schemas.telemetry_message(seq=seq, records=recs))


def publish_all(client: TestClient, device_id: str, payloads: list[bytes], leaf: str = "telemetry") -> None:
    """Publish QoS 1 and wait until the broker acknowledged every message."""
    infos = [client.client.publish(f"devices/{device_id}/{leaf}", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()


def wait_for(predicate, *, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        close_old_connections()
        try:
            last = predicate()
        except Exception as exc:  # the database may be restarting
            last = exc
        if last is True:
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


def bad_payloads(seq_start: int) -> list[bytes]:
    now = schemas.now_ms()
    return [
        b"{not json",
        b"[]",
        json.dumps({"v": 9, "seq": seq_start, "ts": now}).encode(),
        json.dumps({"v": 1, "ts": now, "records": []}).encode(),
        json.dumps({"v": 1, "seq": seq_start, "ts": 5}).encode(),
        json.dumps({"v": 1, "seq": seq_start, "ts": now, "device_id": "someone-else", "records": []}).encode(),
        json.dumps({"v": 1, "seq": seq_start, "ts": now, "records": [{"ts": now}]}).encode(),
    ]
