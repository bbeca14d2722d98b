"""Updates through the running agent: the retained ``ota/assign`` pointer makes it ask its update source
(here a local double of the server), and every state reaches the platform on ``ota/status``."""

import pytest

from fleet.mqtt import publish_retained
from fleet_agent.slots import SlotStore
from fleet_agent.updates import provision
from tests.agent.conftest import bodies, enroll_device, wait_until
from tests.agent.fakes import LocalSource, make_artifact, update_for

FULL_SUCCESS = ["assigned", "downloading", "downloaded", "verifying", "installing", "health_checking", "succeeded"]


@pytest.fixture
def device(platform_url, tmp_path):
    def make(device_id):
        state = tmp_path / device_id
        enroll_device(platform_url, state, device_id)
        v1 = make_artifact(tmp_path / "factory", version="1.0.0")
        provision(SlotStore(state / "models"), v1, name="detector", version="1.0.0", release_counter=1)
        return state

    return make


def ota_states(messages, device_id):
    return [(b["state"], b["reason"]) for b in bodies(messages, "ota/status", device_id)]


def assign(device_id):
    publish_retained([(f"devices/{device_id}/ota/assign", b'{"director_version": 7}')])


def test_assignment_leads_to_a_verified_install_and_every_state_is_reported(device, observer, tmp_path, running):
    state = device("cam-ota")
    artifact = make_artifact(tmp_path / "repo")
    source = LocalSource(None, artifact)
    agent = running(state, update_source=source, probation_s=0)
    wait_until(lambda: agent.session.connected)
    source.update = update_for(artifact)
    assign("cam-ota")
    seen = observer.wait_for(lambda m: ("succeeded", "") in ota_states(m, "cam-ota"))
    assert [s for s, _r in ota_states(seen, "cam-ota")] == FULL_SUCCESS
    assert all(b["target"] == "detector/2.0.0/detector-2.0.0.tar.gz" for b in bodies(seen, "ota/status", "cam-ota"))
    assert agent.active_model() == {"slot": "b", "name": "detector", "version": "2.0.0"}
    beat = bodies(observer.wait_for(lambda m: bodies(m, "heartbeat", "cam-ota")), "heartbeat", "cam-ota")[0]
    assert beat["models"] == [{"name": "detector", "version": "2.0.0", "slot": "b"}]


def test_tampered_artifact_is_refused_and_the_reason_reaches_the_platform(device, observer, tmp_path, running):
    state = device("cam-tamper")
    artifact = make_artifact(tmp_path / "repo")
    tampered = tmp_path / "evil.tar.gz"
    content = bytearray(artifact.read_bytes())
    content[-10] ^= 0x01  # same length, one bit different
    tampered.write_bytes(bytes(content))
    running(state, update_source=LocalSource(update_for(artifact), tampered))
    seen = observer.wait_for(lambda m: ota_states(m, "cam-tamper")[-1:] == [("failed", "hash_mismatch")])
    assert "installing" not in [s for s, _r in ota_states(seen, "cam-tamper")]
    assert SlotStore(state / "models").active().version == "1.0.0"


def test_errors_during_probation_roll_the_update_back(device, observer, tmp_path, running):
    state = device("cam-probation")
    artifact = make_artifact(tmp_path / "repo")
    agent = running(
        state, update_source=LocalSource(update_for(artifact), artifact), probation_s=60, probation_min_records=10
    )
    wait_until(lambda: agent.updater_in_probation)
    assert agent.active_model()["version"] == "2.0.0"
    for _ in range(10):
        agent.record_inference(task="detect", latency_ms=5, error="runtime_crash")
    seen = observer.wait_for(lambda m: ("rolled_back", "probation_errors") in ota_states(m, "cam-probation"))
    assert "succeeded" not in [s for s, _r in ota_states(seen, "cam-probation")]
    wait_until(lambda: agent.active_model()["version"] == "1.0.0")
