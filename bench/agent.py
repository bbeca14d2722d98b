"""Device agent benchmark: idle memory and CPU, records/s queued and published, time to verify a 100 MB
artifact, and how many simulated devices one process keeps connected and reporting.

Runs against a real local Mosquitto configured exactly like production (fleet.broker.broker_setup), with
a throwaway SQLite platform database for the device CA and the real enrollment API served in-process.

    .venv/bin/python bench/agent.py [--sim-devices 1000] [--records 30000]

Ends with one JSON line: {"bench": "agent", "idle_rss_mb": ..., "records_per_s": ..., "verify_100mb_s": ...,
"sim_devices": ...}. Targets: RSS < 40 MB, >= 5,000 records/s, verify < 1 s, 1,000 simulated devices.
"""

import argparse
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from tests import services  # noqa: E402 - free ports and binaries, by import (it sets env we override below)
from tests.processes import process_stat  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="fleet-bench-agent-"))
WORK.chmod(0o755)
HTTP_PORT, DEVICE_PORT, PLATFORM_PORT = services.free_port(), services.free_port(), services.free_port()
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "FLEET_DEBUG": "1",  # a throwaway local platform; never a deployment
        "FLEET_SECRET_KEY": secrets.token_urlsafe(48),
        "FLEET_KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "FLEET_STATE_DIR": str(WORK / "state"),
        "DATABASE_URL": f"sqlite:///{WORK / 'platform.sqlite3'}",
        "MQTT_URL": f"mqtts://127.0.0.1:{DEVICE_PORT}",
        "MQTT_PLATFORM_URL": f"mqtts://127.0.0.1:{PLATFORM_PORT}",
        "MQTT_TLS_DIR": str(WORK / "broker"),
        "FLEET_PUBLIC_URL": f"http://127.0.0.1:{HTTP_PORT}",
    }
)


def start_platform():
    import django

    django.setup()
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    from fleet.broker import broker_setup

    call_command("migrate", interactive=False, verbosity=0)
    config = broker_setup(
        state_dir=WORK / "broker",
        server_names=["localhost", "127.0.0.1"],
        device_port=DEVICE_PORT,
        platform_port=PLATFORM_PORT,
        bind_address="127.0.0.1",
    )
    log = open(WORK / "mosquitto.log", "wb")  # noqa: SIM115 - owned by the broker process
    broker = subprocess.Popen([services.find_binary("mosquitto"), "-c", str(config)], stdout=log, stderr=log)
    services.wait_for_port(DEVICE_PORT)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 256

    httpd = make_server("127.0.0.1", HTTP_PORT, get_wsgi_application(), server_class=Server, handler_class=Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return broker, httpd


def enrollment_token(uses: int) -> str:
    from devices import services as device_services
    from fleet.services import Actor

    return device_services.enrollment_token_create(
        actor=Actor.system("bench"), name="bench", max_uses=uses, auto_accept=True
    ).secret


def bench_idle(server: str) -> tuple[float, float]:
    from fleet_agent.enroll import enroll
    from fleet_agent.system import rss_mb

    state = WORK / "idle-device"
    enroll(server=server, token=enrollment_token(1), state_dir=state, device_id="bench-idle")
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet_agent.cli", "run", "--dir", str(state)],
        env=os.environ | {"PYTHONPATH": str(ROOT / "agent")},
    )
    try:
        deadline = time.monotonic() + 60
        while not (
            json.loads((state / "runtime.json").read_text()).get("connected")
            if (state / "runtime.json").exists()
            else False
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent did not connect")
            time.sleep(0.2)
        time.sleep(3)
        cpu_before, wall_before = process_stat(process.pid)[1], time.monotonic()
        time.sleep(10)
        cpu_pct = 100 * (process_stat(process.pid)[1] - cpu_before) / (time.monotonic() - wall_before)
        return rss_mb(process.pid), cpu_pct
    finally:
        process.terminate()
        process.wait(20)


def bench_records(server: str, count: int) -> tuple[float, float]:
    from fleet_agent.agent import Agent, AgentSettings
    from fleet_agent.enroll import enroll

    state = WORK / "busy-device"
    enroll(server=server, token=enrollment_token(1), state_dir=state, device_id="bench-busy")
    agent = Agent(state, settings=AgentSettings(flush_interval_s=0.2, write_runtime_file=False))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    while not agent.session.connected:
        time.sleep(0.05)
    started = time.monotonic()
    for i in range(count):
        agent.record_inference(
            task="detect",
            model="yolo-n",
            model_version="1.0.0",
            latency_ms=12.5 + i % 7,
            confidence=0.9,
            label="person",
        )
    queued = time.monotonic() - started
    while agent.outbox.depth():
        time.sleep(0.01)
    published = time.monotonic() - started
    stop.set()
    thread.join(20)
    return count / queued, count / published


def bench_verify() -> float:
    from fleet_agent.slots import file_digest

    path = WORK / "artifact-100mb.bin"
    expected = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(100):
            block = os.urandom(1024 * 1024)
            expected.update(block)
            fh.write(block)
    started = time.monotonic()
    length, sha256 = file_digest(path, limit=100 * 1024 * 1024)
    elapsed = time.monotonic() - started
    assert (length, sha256) == (100 * 1024 * 1024, expected.hexdigest())
    path.unlink()
    return elapsed


def bench_simulator(server: str, devices: int, hold_s: float) -> tuple[int, float]:
    from fleet_agent.simulate import Simulator

    simulator = Simulator(
        server=server,
        token=enrollment_token(devices),
        devices=devices,
        base_dir=WORK / "sim",
        records_per_s=0.2,
        workers=4,
        settings={"heartbeat_interval_s": 30.0},
    )
    started = time.monotonic()
    simulator.start()
    print(f"  enrolled and prepared {devices} devices in {time.monotonic() - started:.1f}s", flush=True)
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + max(120.0, devices * 0.2)
    while simulator.connected() < devices and time.monotonic() < deadline:
        time.sleep(1)
    print(
        f"  {simulator.connected()} connected after {time.monotonic() - started:.1f}s; holding {hold_s:g}s", flush=True
    )
    time.sleep(hold_s)
    connected = simulator.connected()
    # "Reporting": connected, and nothing older than a few flushes waiting in its queue.
    reporting = sum(1 for d in simulator.devices if d.agent.session.connected and d.agent.outbox.depth() < 50)
    from fleet_agent.system import rss_mb

    rss = rss_mb()
    stop.set()
    thread.join(120)
    print(f"  {connected} connected, {reporting} reporting at the end; process RSS {rss:.0f} MB", flush=True)
    return min(connected, reporting), rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim-devices", type=int, default=1000)
    parser.add_argument("--sim-hold", type=float, default=30.0)
    parser.add_argument("--records", type=int, default=30000)
    args = parser.parse_args()
    broker, httpd = start_platform()
    logging.getLogger("fleet_agent").setLevel(logging.WARNING)  # one line per reconnect x 1,000 devices
    server = f"http://127.0.0.1:{HTTP_PORT}"
    try:
        rss, cpu = bench_idle(server)
        print(f"idle agent: RSS {rss:.1f} MB, CPU {cpu:.2f}%", flush=True)
        queued_per_s, published_per_s = bench_records(server, args.records)
        print(
            f"records: {queued_per_s:.0f}/s queued, {published_per_s:.0f}/s queued+published ({args.records} records)",
            flush=True,
        )
        verify_s = bench_verify()
        print(f"verify 100 MB (length + sha256): {verify_s:.3f}s", flush=True)
        sim_devices, sim_rss = bench_simulator(server, args.sim_devices, args.sim_hold)
        print(f"simulated devices connected and reporting: {sim_devices}/{args.sim_devices}", flush=True)
    finally:
        shutil.copy(WORK / "mosquitto.log", Path(tempfile.gettempdir()) / "fleet-bench-agent-mosquitto.log")
        httpd.shutdown()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.rmtree(services.RUN_DIR, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "agent",
                "idle_rss_mb": round(rss, 1),
                "idle_cpu_pct": round(cpu, 2),
                "records_per_s": round(published_per_s),
                "verify_100mb_s": round(verify_s, 3),
                "sim_devices": sim_devices,
                "sim_rss_mb": round(sim_rss),
            }
        )
    )


if __name__ == "__main__":
    main()
