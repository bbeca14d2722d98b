"""The platform's policy reaches the running agent: published signed and retained by the policies app,
verified with the key from enrollment, and then driving decide()."""

import pytest

from fleet.celery import app as celery_app
from fleet.services import Actor
from fleet_agent.cli import status_report
from policies import services
from tests.agent.conftest import bodies, enroll_device, wait_until

DOCUMENT = {
    "tasks": {
        "chat": {"routes": ["local", "cloud"], "models": ["small"], "prefer": "cloud"},
        "*": {"routes": ["local"]},
    },
    "data_classes": {"public": "allow", "health": "never"},
}


@pytest.fixture
def eager_celery():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_published_policy_is_verified_by_the_agent_and_drives_decide(
    platform_url, tmp_path, running, eager_celery, observer
):
    state = tmp_path / "cam-policy"
    enrollment = enroll_device(platform_url, state, "cam-policy")
    assert "BEGIN PUBLIC KEY" in enrollment["policy_public_key"]
    agent = running(state)
    wait_until(lambda: agent.session.connected)
    assert agent.decide(task="chat", data_class="public").reason == "no_policy"

    # The fleet default (a lower scope can only narrow what the top allows).
    services.policy_create(actor=Actor.system("tests"), scope="fleet", document=DOCUMENT)
    wait_until(lambda: agent.decide(task="chat", data_class="public").reason != "no_policy")
    cloud = agent.decide(task="chat", data_class="public")
    assert (cloud.route, cloud.model) == ("cloud", "small")
    assert agent.decide(task="chat", data_class="health").route == "local"
    assert agent.decide(task="translate", data_class="public").route == "local"
    assert status_report(state)["policy_version"] == agent.policy_version
    # Each decision made under the policy is reported to the platform's ledger, in a body its ingest accepts.
    seen = observer.wait_for(lambda m: len(bodies(m, "llm/usage", "cam-policy")) >= 4)
    usage = bodies(seen, "llm/usage", "cam-policy")
    assert {(u["task"], u["data_class"], u["route"], u.get("model")) for u in usage} == {
        ("chat", "public", "cloud", "small"),
        ("chat", "health", "local", None),
        ("translate", "public", "local", None),
    }
    from policies.ingest import _check

    assert all(_check(u) is None for u in usage)
