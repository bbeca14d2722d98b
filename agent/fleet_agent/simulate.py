"""A fleet simulator: N virtual devices in one process, each a real ``Agent`` (own key, certificate,
queue, slot directory) enrolled through the real API, applying updates through the same code path.

Telemetry depends on the model version each device runs, from profiles (``--profiles``, JSON)::

    {"default": {"latency_ms": [20, 4], "error_rate": 0.01, "confidence": [0.88, 0.05]},
     "2.0.0":   {"latency_ms": [45, 10], "error_rate": 0.2, "confidence": [0.6, 0.1]}}

``latency_ms`` and ``confidence`` are (mean, standard deviation) of a normal distribution (clipped);
a version without a profile uses ``default``. So a "bad" release is one line.

Sessions are driven by a few worker threads (each polls its share of devices without blocking), and
update work goes to one small shared pool: 1,000 devices do not need 1,000 threads.
"""

import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleet_agent.agent import Agent, AgentSettings
from fleet_agent.enroll import EnrollError, Paths, enroll
from fleet_agent.fsutil import read_json
from fleet_agent.slots import SlotStore
from fleet_agent.updates import UpdateSource, provision

log = logging.getLogger(__name__)

DEFAULT_PROFILES = {
    "default": {"latency_ms": [22.0, 5.0], "error_rate": 0.01, "confidence": [0.87, 0.06]},
}
TASKS = (("detect", ["person", "car", "bicycle", "dog"]), ("classify", ["ok", "defect"]))
INITIAL_MODEL = ("sim-detector", "1.0.0")


def load_profiles(path: Path) -> dict:
    profiles = json.loads(path.read_text())
    if "default" not in profiles:
        profiles["default"] = DEFAULT_PROFILES["default"]
    return profiles


class VirtualDevice:
    def __init__(self, agent: Agent, profiles: dict, rng: random.Random):
        self.agent = agent
        self.profiles = profiles
        self.rng = rng
        self.carry = 0.0

    def emit(self, count: int) -> None:
        model = self.agent.active_model()
        profile = self.profiles.get(model["version"] or "", self.profiles["default"])
        mean, sd = profile["latency_ms"]
        c_mean, c_sd = profile["confidence"]
        for _ in range(count):
            task, labels = self.rng.choice(TASKS)
            failed = self.rng.random() < profile["error_rate"]
            self.agent.record_inference(
                task=task,
                latency_ms=max(0.5, self.rng.gauss(mean, sd)),
                confidence=None if failed else min(1.0, max(0.0, self.rng.gauss(c_mean, c_sd))),
                label=None if failed else self.rng.choice(labels),
                error="inference_failed" if failed else None,
            )


class Simulator:
    def __init__(
        self,
        *,
        server: str,
        token: str,
        devices: int,
        base_dir: Path,
        prefix: str = "sim",
        records_per_s: float = 1.0,
        profiles: dict | None = None,
        workers: int = 4,
        settings: dict | None = None,
        source_factory: Callable[[Agent], UpdateSource] | None = None,
        hardware_class: str = "sim-cpu",
        seed: int | None = None,
    ):
        self.server, self.token = server, token
        self.count = devices
        self.base_dir = base_dir
        self.prefix = prefix
        self.records_per_s = records_per_s
        self.profiles = profiles or DEFAULT_PROFILES
        self.workers = max(1, workers)
        # In-process TUF checks: one process serves all the devices (a child per check would not scale).
        self.settings = {
            "write_runtime_file": False,
            "heartbeat_interval_s": 30.0,
            "probation_s": 10.0,
            "isolate_update_checks": False,
        } | (settings or {})
        self.source_factory = source_factory
        self.hardware_class = hardware_class
        self.rng = random.Random(seed)
        self.devices: list[VirtualDevice] = []
        self.update_pool = ThreadPoolExecutor(4, thread_name_prefix="sim-update")
        self._threads: list[threading.Thread] = []

    def device_id(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}"

    def _prepare(self, index: int) -> Agent:
        state_dir = self.base_dir / self.device_id(index)
        if (read_json(Paths(state_dir).enrollment) or {}).get("status") != "active":
            self._enroll(index, state_dir)
        store = SlotStore(state_dir / "models")
        if store.active_slot() is None:
            with tempfile.NamedTemporaryFile(prefix="sim-model-") as artifact:
                artifact.write(f"{INITIAL_MODEL[0]} {INITIAL_MODEL[1]} weights\n".encode() * 64)
                artifact.flush()
                provision(store, Path(artifact.name), name=INITIAL_MODEL[0], version=INITIAL_MODEL[1])
        agent = Agent(state_dir, settings=AgentSettings(**self.settings), executor=self.update_pool)
        if self.source_factory is not None:
            agent.updater.source = self.source_factory(agent)
        return agent

    def _enroll(self, index: int, state_dir: Path) -> None:
        # The platform may still be starting (make run starts everything at once): wait for it.
        deadline = time.monotonic() + 120
        while True:
            try:
                enroll(
                    server=self.server,
                    token=self.token,
                    state_dir=state_dir,
                    device_id=self.device_id(index),
                    hardware_class=self.hardware_class,
                    runtime="sim",
                    poll_interval_s=2.0,
                )
                return
            except EnrollError as exc:
                if exc.code != "unreachable" or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(8) as pool:
            agents = list(pool.map(self._prepare, range(self.count)))
        for agent in agents:
            agent.start()
            self.devices.append(VirtualDevice(agent, self.profiles, random.Random(self.rng.random())))

    def connected(self) -> int:
        return sum(1 for d in self.devices if d.agent.session.connected)

    def _worker(self, share: list[VirtualDevice], stop: threading.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            elapsed, last = now - last, now
            for device in share:
                try:
                    device.agent.session.poll(0)
                    device.carry += self.records_per_s * elapsed
                    whole = int(device.carry)
                    if whole:
                        device.carry -= whole
                        device.emit(whole)
                    device.agent.tick()
                except (OSError, EnrollError, ValueError):
                    log.exception("%s: simulator step failed", device.agent.device_id)
            stop.wait(max(0.0, 0.1 - (time.monotonic() - now)))

    def run(self, stop: threading.Event) -> None:
        if not self.devices:
            self.start()
        shares = [self.devices[i :: self.workers] for i in range(self.workers)]
        self._threads = [
            threading.Thread(target=self._worker, args=(share, stop), name=f"sim-{i}", daemon=True)
            for i, share in enumerate(shares)
        ]
        for thread in self._threads:
            thread.start()
        stop.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        self.shutdown()

    def shutdown(self) -> None:
        for device in self.devices:
            device.agent.session.close(final_payload=device.agent._status_payload("offline"))
        self.update_pool.shutdown(wait=True, cancel_futures=True)
        for device in self.devices:
            device.agent.outbox.close()
