import json

import pytest

from fleet.services import Actor
from policies import services
from tests.policies.upstream import Upstream

SYSTEM = Actor.system("tests")

PRIVACY_FIRST = {
    "tasks": {
        "chat": {
            "routes": ["local", "cloud"],
            "models": ["small", "large"],
            "prefer": "cloud",
            "max_input_tokens": 4000,
            "max_output_tokens": 200,
        },
        "summarize": {"routes": ["local", "cloud"], "models": ["small"], "prefer": "cloud"},
        "*": {"routes": ["local"]},
    },
    "data_classes": {"public": "allow", "internal": "allow", "personal": "redact_then_cloud", "health": "never"},
    "budgets": {"day": {"tokens": 1_000_000, "cost": 50.0, "requests": 10_000}},
}


def make_policy(scope="fleet", document=None, *, group=None, device=None):
    return services.policy_create(
        actor=SYSTEM, scope=scope, document=document or PRIVACY_FIRST, group=group, device=device
    )


@pytest.fixture
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture
def backup_upstream():
    with Upstream() as server:
        yield server


@pytest.fixture
def gateway_upstreams(settings, upstream, backup_upstream):
    """Two upstreams serving the same aliases: the first is tried first, the second on failure."""

    def entry(name, server, price):
        return {
            "name": name,
            "base_url": server.base_url,
            "api_key": f"sk-{name}-secret",
            "models": {
                "small": {"model": f"{name}-small-v1", "input_per_1k": price, "output_per_1k": price * 2},
                "large": {"model": f"{name}-large-v1", "input_per_1k": price * 10, "output_per_1k": price * 20},
            },
        }

    settings.LLM_UPSTREAMS = json.dumps([entry("primary", upstream, 0.001), entry("backup", backup_upstream, 0.002)])
    return upstream, backup_upstream
