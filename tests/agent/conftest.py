import json
from pathlib import Path

import pytest

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
