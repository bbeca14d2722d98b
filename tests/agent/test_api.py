"""The Python API the device application uses: record_inference validation and defaults, decide()."""

import json

import pytest

from fleet_agent.agent import Agent, AgentSettings
from fleet_agent.slots import SlotStore
from fleet_agent.updates import provision
from tests.agent.conftest import enroll_device
from tests.agent.fakes import make_artifact


@pytest.fixture
def agent(platform_url, tmp_path):
    state = tmp_path / "cam-api"
    enroll_device(platform_url, state, "cam-api")
    provision(
        SlotStore(state / "models"), make_artifact(tmp_path / "f", version="1.4.0"), name="yolo-n", version="1.4.0"
    )
    agent = Agent(state, settings=AgentSettings())
    agent.start()
    yield agent
    agent.shutdown()


def test_record_takes_model_and_version_from_the_active_slot(agent):
    agent.record_inference(task="detect", latency_ms=12.5, confidence=0.91, label="person")
    agent.record_inference(
        task="chat",
        latency_ms=800,
        route="cloud",
        cloud_model="gpt-4o-mini",
        tokens_in=12,
        tokens_out=3,
        model="other",
        model_version="9",
    )
    agent.outbox.seal_batches(force=True)
    (batch,) = [json.loads(m.payload) for m in agent.outbox.pending(limit=10) if m.leaf == "telemetry"]
    first, second = batch["records"]
    assert (first["model"], first["model_version"], first["route"], first["error"]) == (
        "yolo-n",
        "1.4.0",
        "local",
        None,
    )
    assert (second["model"], second["model_version"], second["cloud_model"], second["tokens_in"]) == (
        "other",
        "9",
        "gpt-4o-mini",
        12,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "", "latency_ms": 1},
        {"task": "detect", "latency_ms": -1},
        {"task": "detect", "latency_ms": float("nan")},
        {"task": "detect", "latency_ms": 1, "confidence": 1.5},
        {"task": "detect", "latency_ms": 1, "route": "elsewhere"},
        {"task": "x" * 65, "latency_ms": 1},
        {"task": "detect", "latency_ms": 1, "error": "e" * 65},
    ],
)
def test_invalid_records_are_refused_before_they_reach_the_queue(agent, bad):
    with pytest.raises(ValueError):
        agent.record_inference(**bad)
    assert agent.outbox.depth() == 0


def test_decide_without_a_policy_denies_with_no_policy(agent):
    decision = agent.decide(task="chat", data_class="public")
    assert (decision.route, decision.reason, decision.model) == ("deny", "no_policy", None)
