"""The whole update path with the real platform: a release uploaded to the image repository, the
director pointed at it, the retained assignment pointer published; the running agent verifies director
and image metadata with TUF (fleet_agent.uptane, from the roots it got at enrollment), installs into its
A/B slots, health-checks, and every state reaches the platform."""

import subprocess
import sys

import pytest

from fleet_agent.slots import SlotStore
from fleet_agent.updates import provision
from ota import notify, services
from tests.agent.conftest import bodies, enroll_device, wait_until
from tests.agent.fakes import make_artifact
from tests.ota.conftest import release

FULL_SUCCESS = ["assigned", "downloading", "downloaded", "verifying", "installing", "health_checking", "succeeded"]


@pytest.fixture
def tuf_device(platform_url, settings, tmp_path):
    # The repository URLs handed out at enrollment are built from PUBLIC_URL: point it at the live server.
    settings.PUBLIC_URL = platform_url

    def make(device_id: str, hardware_class: str = "rpi4"):
        state = tmp_path / device_id
        enrollment = enroll_device(platform_url, state, device_id, hardware_class=hardware_class)
        assert {"image_root", "director_root", "image_url", "director_url"} <= set(enrollment["update_trust"])
        factory = make_artifact(tmp_path / "factory", version="0.9.0")
        provision(SlotStore(state / "models"), factory, name="detector", version="0.9.0")
        return state

    return make


def ota_states(messages, device_id):
    return [(b["state"], b["reason"]) for b in bodies(messages, "ota/status", device_id)]


def test_director_assignment_is_verified_installed_and_reported(tuf_device, observer, tmp_path, running):
    state = tuf_device("cam-tuf")
    agent = running(state, probation_s=0)
    wait_until(lambda: agent.session.connected)
    content = make_artifact(tmp_path / "release", version="1.0.0", selftest="exit 0").read_bytes()
    artifact = release(version="1.0.0", content=content, hardware=("rpi4",))
    services.director_assign(device_ids=["cam-tuf"], artifact=artifact)
    notify.publish_assignments(["cam-tuf"])
    seen = observer.wait_for(lambda m: ("succeeded", "") in ota_states(m, "cam-tuf"), timeout=60)
    assert [s for s, _r in ota_states(seen, "cam-tuf")] == FULL_SUCCESS
    wait_until(lambda: agent.active_model()["version"] == "1.0.0")
    active = SlotStore(state / "models").active()
    assert active.manifest["sha256"] == artifact.sha256 and active.manifest["target"] == "detector/1.0.0/model.onnx"


def test_release_for_other_hardware_is_refused_by_tuf_verification(tuf_device, observer, tmp_path, running):
    state = tuf_device("cam-tuf-hw", hardware_class="jetson")
    agent = running(state, probation_s=0)
    wait_until(lambda: agent.session.connected)
    artifact = release(version="1.0.0", content=make_artifact(tmp_path / "r").read_bytes(), hardware=("rpi4",))
    services.director_assign(device_ids=["cam-tuf-hw"], artifact=artifact)
    notify.publish_assignments(["cam-tuf-hw"])
    seen = observer.wait_for(lambda m: ota_states(m, "cam-tuf-hw"), timeout=60)
    assert ota_states(seen, "cam-tuf-hw") == [("failed", "wrong_hardware")]
    assert agent.active_model()["version"] == "0.9.0"


def test_the_agent_process_itself_never_loads_the_tuf_client(tuf_device):
    """Checks run in a child process, so the long-running agent keeps its memory small (docs/agent.md)."""
    state = tuf_device("cam-tuf-lean")
    script = (
        "import sys\nfrom pathlib import Path\nfrom fleet_agent.agent import Agent\n"
        f"agent = Agent(Path({str(state)!r}))\n"
        "agent.start()\nagent._update_job()\n"
        "print(type(agent.updater.source).__name__, 'tuf' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split()[-2:] == ["UptaneSource", "False"]
