import json
import threading
import time
from pathlib import Path

import pytest

from fleet_agent.agent import Agent, AgentSettings
from fleet_agent.outbox import Outbox
from fleet_agent.slots import SlotStore
from fleet_agent.updates import Updater, UpdateSettings, provision
from tests.agent.fakes import make_artifact


class Reports(list):
    def __call__(self, state, target, reason="", detail=""):
        self.append((state, target, reason))

    def states(self):
        return [r[0] for r in self]


@pytest.fixture
def store(tmp_path) -> SlotStore:
    """A device with model 1.0.0 factory-installed in slot a."""
    store = SlotStore(tmp_path / "models")
    v1 = make_artifact(tmp_path / "factory", version="1.0.0")
    provision(store, v1, name="detector", version="1.0.0", release_counter=1)
    return store


@pytest.fixture
def make_updater(store):
    def build(source, **settings):
        reports = Reports()
        updater = Updater(
            store=store, source=source, report=reports, settings=UpdateSettings(hardware_class="test-hw", **settings)
        )
        return updater, reports

    return build


def outbox_messages(path: Path, leaf: str | None = None) -> list[dict]:
    outbox = Outbox(path)
    try:
        return [json.loads(m.payload) for m in outbox.pending(limit=100000) if leaf is None or m.leaf == leaf]
    finally:
        outbox.close()


# -- the real platform: HTTP (live_server) and the broker ------------------------------------------------
@pytest.fixture
def platform_url(live_server, mqtt_broker_tx) -> str:
    """The platform's HTTP API (a live server on the test PostgreSQL) with the broker running."""
    return live_server.url


def enroll_device(
    platform_url: str,
    state_dir: Path,
    device_id: str,
    *,
    settings: dict | None = None,
    hardware_class: str = "test-hw",
    **kwargs,
):
    from fleet_agent.enroll import enroll
    from tests.factories import make_token

    enrollment = enroll(
        server=platform_url,
        token=make_token(),
        state_dir=state_dir,
        device_id=device_id,
        hardware_class=hardware_class,
        **kwargs,
    )
    if settings:
        (state_dir / "agent.json").write_text(json.dumps(settings))
    return enrollment


class Observer:
    """A platform-ingest client (the ingest worker's credentials) recording what devices publish. Its
    session is persistent, so it survives a broker restart without missing messages."""

    def __init__(self, client_id: str = "agent-test-observer"):
        import queue
        import threading

        from fleet.mqtt import connect, platform_client

        self.messages: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.client = platform_client("platform-ingest", client_id=client_id, clean_start=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload), m.retain))
        self.client.on_connect = self._subscribe
        connect(self.client, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _subscribe(self, client, _userdata, _flags, reason, _props):
        if reason == 0:
            for leaf in ("telemetry", "heartbeat", "status", "ota/status", "llm/usage"):
                client.subscribe(f"devices/+/{leaf}", qos=1)
            self.subscribed.set()

    def wait_for(self, predicate, timeout: float = 20.0) -> list:
        """Collect messages until predicate(all collected so far) is true; returns them."""
        import queue
        import time

        seen, deadline = [], time.monotonic() + timeout
        while not predicate(seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; got {[(t, p[:80]) for t, p, _r in seen]}")
            try:
                seen.append(self.messages.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue
        return seen

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observer(mqtt_broker_tx):
    import uuid

    obs = Observer(f"agent-obs-{uuid.uuid4().hex[:8]}")
    yield obs
    obs.close()


def bodies(messages, leaf: str, device: str | None = None) -> list[dict]:
    """Live (not retained) message bodies of one leaf, of one device or any."""
    return [
        json.loads(p)
        for t, p, retained in messages
        if not retained and t.endswith(f"/{leaf}") and (device is None or t == f"devices/{device}/{leaf}")
    ]


FAST = {
    "heartbeat_interval_s": 0.5,
    "flush_interval_s": 0.2,
    "reconnect_min_s": 0.2,
    "reconnect_max_s": 1.0,
    "keepalive_s": 5,
}


class Running:
    """An agent driven by its own loop thread, as `fleet-agent run` does."""

    def __init__(self, state, update_source=None, **settings):
        self.agent = Agent(state, settings=AgentSettings(**(FAST | settings)), update_source=update_source)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,))
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(15)


@pytest.fixture
def running():
    started = []

    def start(state, update_source=None, **settings):
        started.append(Running(state, update_source, **settings))
        return started[-1].agent

    yield start
    for item in started:
        item.close()


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
