"""`make run`: the whole platform on its embedded defaults, as child processes of this command.

Each part is the same command production runs (web, broker, ingest worker, Celery worker with beat, a
simulated fleet); this command only supervises them: it starts them in order, prints where to look,
and stops them all when one dies or on Ctrl-C/SIGTERM.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from fleet.broker import broker_setup, mosquitto_binary
from fleet.mqtt import broker_address


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None


def manage(*args: str) -> list[str]:
    return [sys.executable, str(settings.BASE_DIR / "manage.py"), *args]


def simulator_child(*, host: str, port: int, devices: int) -> Child:
    """A small simulated fleet (fleet-agent simulate), so a newcomer sees devices report within a minute.
    Its devices keep their state under FLEET_STATE_DIR/sim, so a restart reuses them."""
    from devices.services import enrollment_token_create
    from fleet.services import Actor

    token = enrollment_token_create(
        actor=Actor.system("make run"), name="make run: simulated fleet", max_uses=devices, auto_accept=True
    ).secret
    argv = [sys.executable, "-m", "fleet_agent.cli", "simulate", "--server", f"http://{host}:{port}"]
    argv += ["--token", token, "--devices", str(devices), "--dir", str(settings.STATE_DIR / "sim")]
    return Child("simulator", argv)


def platform_children(*, host: str, port: int) -> list[Child]:
    """The processes of the embedded platform, in start order."""
    device_host, device_port, _ = broker_address(settings.MQTT_URL)
    _platform_host, platform_port, _ = broker_address(settings.MQTT_PLATFORM_URL)
    config = broker_setup(
        state_dir=settings.MQTT_TLS_DIR.resolve(),
        server_names=sorted({"localhost", "127.0.0.1", device_host}),
        device_port=device_port,
        platform_port=platform_port,
        bind_address=device_host,
    )
    # The embedded Celery transport keeps its queue in files (fleet/settings.py); beat runs in the worker.
    for folder in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if folder in getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}):
            Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[folder]).mkdir(parents=True, exist_ok=True)
    celery = [sys.executable, "-m", "celery", "-A", "fleet", "worker", "--beat", "--concurrency", "1"]
    celery += ["--loglevel", "INFO", "--schedule", str(settings.STATE_DIR / "celerybeat-schedule")]
    return [
        Child("broker", [mosquitto_binary(), "-c", str(config)]),
        Child("web", manage("runserver", f"{host}:{port}", "--noreload")),
        # One worker: an exclusive subscription, which (unlike a shared one) survives a broker restart.
        Child("ingest", manage("ingest", "--client-id", "ingest-embedded", "--exclusive")),
        Child("celery", celery),
    ]


class Command(BaseCommand):
    help = "Run the platform on its embedded defaults (web, broker, workers, simulated fleet)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--sim-devices", type=int, default=25, help="simulated devices (0: none)")

    def handle(self, *args, host: str, port: int, sim_devices: int, **options):
        settings.STATE_DIR.mkdir(parents=True, exist_ok=True)
        # The URL devices are told at enrollment (repositories, gateway) must be the one we serve on.
        os.environ.setdefault("FLEET_PUBLIC_URL", f"http://{host}:{port}")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_operator", url=f"http://{host}:{port}")
        children = platform_children(host=host, port=port)
        if sim_devices > 0:
            children.append(simulator_child(host=host, port=port, devices=sim_devices))
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for child in children:
            child.process = subprocess.Popen(child.argv, env=os.environ | child.env)
            self.stdout.write(f"started {child.name} (pid {child.process.pid})")
        self.stdout.write(f"The platform is up: http://{host}:{port}/  (Ctrl-C stops everything)")
        broker = next(child for child in children if child.name == "broker")
        crl_path = settings.MQTT_TLS_DIR / "device-crl.pem"
        crl_mtime = crl_path.stat().st_mtime
        try:
            while not stopping:
                for child in children:
                    if child.process.poll() is not None:
                        self.stderr.write(f"{child.name} exited with {child.process.returncode}; stopping")
                        stopping = True
                # A revocation (or the periodic refresh) rewrote the CRL: make Mosquitto re-read it.
                if crl_path.stat().st_mtime != crl_mtime:
                    crl_mtime = crl_path.stat().st_mtime
                    broker.process.send_signal(signal.SIGHUP)
                time.sleep(0.5)
        finally:
            for child in reversed(children):
                if child.process and child.process.poll() is None:
                    child.process.terminate()
            for child in reversed(children):
                if child.process:
                    try:
                        child.process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        child.process.kill()
