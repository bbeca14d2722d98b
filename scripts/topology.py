#!/usr/bin/env python3
"""The production topology without containers, from the system's binaries (docker/compose.yaml's twin).

Starts PostgreSQL, Redis, Mosquitto (mTLS + ACL, configured by `manage.py broker_setup` like the compose
init step), the web server under gunicorn, two ingest workers on the shared subscription, a Celery
worker and Celery beat, and a simulated fleet, each with the same command the compose file runs.

    .venv/bin/python scripts/topology.py                 # run until Ctrl-C
    .venv/bin/python scripts/topology.py --check         # prove it works, print a JSON summary, stop

--check waits until every simulated device is online and its telemetry is stored, rolls out a new
model release to the whole fleet in two stages through the REST API and waits for the rollout to
complete (every device reporting the new version installed), and logs in to the console.
"""

import argparse
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._services import BenchPostgres, free_port, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent


class Topology:
    def __init__(self, *, state: Path, devices: int):
        self.state = state
        self.devices = devices
        self.processes: dict[str, subprocess.Popen] = {}
        self.postgres: BenchPostgres | None = None
        self.web_port = free_port()
        self.device_port = free_port()
        self.platform_port = free_port()
        self.redis_port = free_port()
        self.env: dict[str, str] = {}
        self.api_token = ""

    # --- processes ------------------------------------------------------------------------------

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "python"), "manage.py", *args], env=self.env, cwd=ROOT, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def up(self) -> None:
        self.postgres = BenchPostgres.start()
        self.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.state),
            ],
        )
        broker_dir = self.state / "broker"
        self.env = os.environ | {
            "DATABASE_URL": self.postgres.url("fleet"),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "MQTT_URL": f"mqtts://127.0.0.1:{self.device_port}",
            "MQTT_PLATFORM_URL": f"mqtts://127.0.0.1:{self.platform_port}",
            "MQTT_TLS_DIR": str(broker_dir),
            "FLEET_STATE_DIR": str(self.state / "platform"),
            "FLEET_PUBLIC_URL": f"http://127.0.0.1:{self.web_port}",
            "FLEET_SECRET_KEY": secrets.token_urlsafe(48),
            "FLEET_KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
            "OTA_GATE_TICK_SECONDS": "5",
            "FLEET_LOG_LEVEL": "WARNING",
        }
        self.env.pop("FLEET_DEBUG", None)
        wait_for_port(self.redis_port)
        self.manage("migrate", "--noinput")
        conf = self.manage(
            "broker_setup",
            *("--dir", str(broker_dir), "--device-port", str(self.device_port)),
            *("--platform-port", str(self.platform_port), "--bind", "127.0.0.1"),
        ).strip()
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.start("mosquitto", [mosquitto, "-c", conf])
        self.start(
            "web",
            [
                str(BIN / "gunicorn"),
                "fleet.wsgi",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "8",
            ],
        )
        for index in (1, 2):
            self.start(
                f"ingest-{index}", [str(BIN / "python"), "manage.py", "ingest", "--client-id", f"ingest-{index}"]
            )
        self.start(
            "worker", [str(BIN / "celery"), "-A", "fleet", "worker", "--loglevel", "WARNING", "--concurrency", "2"]
        )
        self.start(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "fleet",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(self.state / "beat"),
            ],
        )
        wait_for_port(self.device_port)
        wait_for_port(self.web_port)
        operator = self.manage("ensure_operator", "--username", "ops", "--url", f"http://127.0.0.1:{self.web_port}")
        self.api_token = re.search(r"API token: (\S+)", operator).group(1)
        self.password = re.search(r"Password:\s+(\S+)", operator).group(1)
        token = self.manage("create_enrollment_token", "--name", "topology", "--max-uses", str(self.devices)).strip()
        self.start(
            "simulator",
            [
                str(BIN / "fleet-agent"),
                *("simulate", "--server", f"http://127.0.0.1:{self.web_port}", "--token", token),
                *("--devices", str(self.devices), "--dir", str(self.state / "sim"), "--rate", "2"),
            ],
        )

    def down(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if self.postgres:
            self.postgres.stop()

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    # --- REST API -------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None, *, data: bytes | None = None, headers=None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}",
            method=method,
            data=data if data is not None else (json.dumps(body).encode() if body is not None else None),
            headers={"Authorization": f"Token {self.api_token}", "Content-Type": "application/json"} | (headers or {}),
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
            return json.loads(response.read() or b"null")

    def wait_for(self, what: str, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dead():
                raise RuntimeError(f"processes died while waiting for {what}: {self.dead()}")
            value = predicate()
            if value:
                return value
            time.sleep(1)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}")

    def devices_reporting(self) -> int:
        devices = self.api("GET", f"/api/v1/devices/?online=true&page_size={self.devices}")["results"]
        reporting = 0
        for device in devices:
            records = self.api("GET", f"/api/v1/telemetry/devices/{device['id']}/records/")
            reporting += bool(records["results"] if isinstance(records, dict) else records)
        return reporting

    def upload_release(self, version: str) -> int:
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        fields = {"name": "sim-detector", "version": version, "runtime": "onnx", "hardware_classes": "sim-cpu"}
        for key, value in fields.items():
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="model.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body.write(os.urandom(64 * 1024) + b"\r\n" + f"--{boundary}--\r\n".encode())
        artifact = self.api(
            "POST",
            "/api/v1/ota/artifacts/",
            data=body.getvalue(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return artifact["id"]

    def check(self) -> dict:
        started = time.monotonic()
        self.wait_for(
            "every device online with stored telemetry", lambda: self.devices_reporting() >= self.devices, 180
        )
        telemetry_s = time.monotonic() - started
        artifact = self.upload_release("1.1.0")
        gate = {"install_failure_rate": {"threshold": 0.2, "min_samples": 1}}
        rollout = self.api(
            "POST",
            "/api/v1/ota/rollouts/",
            {
                "name": "topology check",
                "artifact": artifact,
                "selector": {"hardware_classes": ["sim-cpu"]},
                "stages": [{"share": 0.5, "gates": gate}, {"share": 1.0, "gates": gate}],
                "gate_window_seconds": 60,
            },
        )
        self.api("POST", f"/api/v1/ota/rollouts/{rollout['id']}/start/", {})
        rollout_started = time.monotonic()
        final = self.wait_for(
            "the rollout to complete",
            lambda: (
                (r := self.api("GET", f"/api/v1/ota/rollouts/{rollout['id']}/"))["state"]
                in {"completed", "paused", "aborted", "rolled_back"}
                and r
            ),
            300,
        )
        if final["state"] != "completed":
            raise RuntimeError(f"rollout ended {final['state']}: {final.get('last_decision')}")
        rollout_s = time.monotonic() - rollout_started
        # Completed means every stage passed its gate; also require every device to have installed it.
        states = self.wait_for(
            "every device to report the new release installed",
            lambda: (
                (
                    s := [
                        d["state"]
                        for d in self.api("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices/?page_size=1000")[
                            "results"
                        ]
                    ]
                )
                and len(s) == self.devices
                and set(s) == {"succeeded"}
                and s
            ),
            120,
        )
        console = urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/login/", timeout=10)
        counters = self.api("GET", "/api/v1/telemetry/counters/")
        return {
            "topology": "ok",
            "devices": self.devices,
            "telemetry_flowing_after_s": round(telemetry_s, 1),
            "rollout_completed_after_s": round(rollout_s, 1),
            "devices_updated": len(states),
            "console_status": console.status,
            "ingest_counters": counters,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--check", action="store_true", help="verify and stop instead of running until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=None, help="state folder (default: a new temporary one)")
    args = parser.parse_args()
    state = args.dir or Path(tempfile.mkdtemp(prefix="fleet-topology-"))
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    topology = Topology(state=state, devices=args.devices)
    try:
        topology.up()
        if args.check:
            print(json.dumps(topology.check()))
        else:
            print(
                f"Up: http://127.0.0.1:{topology.web_port}/ (user ops, password {topology.password}); logs in {state}"
            )
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except (RuntimeError, urllib.error.URLError) as exc:
        print(f"topology failed: {exc}; logs in {state}", file=sys.stderr)
        for name in topology.processes:
            log = (state / f"{name}.log").read_text(errors="replace")[-2000:]
            print(f"--- {name}.log (tail)\n{log}", file=sys.stderr)
        sys.exit(1)
    finally:
        topology.down()


if __name__ == "__main__":
    main()
