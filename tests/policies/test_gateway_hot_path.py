"""The gateway's hot path: its per-process cache of compiled policies (a policy change, in any scope and
from any process, takes effect on the very next request), the queries a request costs, and recovery from
a cut database connection without a per-request health check."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import DeviceGroup
from policies import services
from policies.models import Policy
from tests.factories import make_device
from tests.policies.conftest import PRIVACY_FIRST, SYSTEM, make_policy
from tests.policies.test_gateway import ask
from tests.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
NO_PUBLIC = PRIVACY_FIRST | {"data_classes": PRIVACY_FIRST["data_classes"] | {"public": "never"}}


def code_of(response) -> str | None:
    return None if response.status_code == 200 else response.json()["error"]["code"]


@pytest.mark.django_db
@pytest.mark.parametrize("prepared", [True, False])
def test_a_cached_policy_costs_no_query_beyond_the_caller_lookup(gateway_upstreams, settings, prepared):
    settings.LLM_GATEWAY_PREPARED_STATEMENTS = prepared
    make_policy()
    result, _ = make_device("cam-cache-1")
    assert ask(result.device_token).status_code == 200  # this process now holds the compiled policy
    with CaptureQueriesContext(connection) as queries:
        assert ask(result.device_token).status_code == 200
    # The caller and its policy key, the reservation, the settlement: the policy documents are not read.
    assert len(queries) == 3, [q["sql"] for q in queries]
    if not prepared:  # (Django's query log cannot show the text of a prepared statement)
        assert Policy._meta.db_table in queries[0]["sql"]


@pytest.mark.django_db
def test_the_hot_statements_are_prepared_once_per_connection(gateway_upstreams):
    make_policy()
    result, _ = make_device("cam-cache-6")
    for _ in range(3):
        assert ask(result.device_token).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    # The caller lookup, the reservation and the settlement, each prepared once and used three times.
    assert len(prepared) == 3, prepared
    assert [any(word in sql for sql in prepared) for word in ("token_hash", "ON CONFLICT", "settled")] == [True] * 3


@pytest.mark.django_db
def test_policy_change_takes_effect_on_the_next_request(gateway_upstreams):
    policy = make_policy()
    result, _ = make_device("cam-cache-2")
    assert ask(result.device_token).status_code == 200
    services.policy_update(actor=SYSTEM, policy=policy, document=NO_PUBLIC)
    assert code_of(ask(result.device_token)) == "egress_never"
    services.policy_update(actor=SYSTEM, policy=Policy.objects.get(pk=policy.pk), document=PRIVACY_FIRST)
    assert ask(result.device_token).status_code == 200


@pytest.mark.django_db
def test_group_and_device_policies_take_effect_on_the_next_request(gateway_upstreams):
    make_policy()
    strict = DeviceGroup.objects.create(name="strict")
    make_policy("group", NO_PUBLIC, group=strict)
    result, _ = make_device("cam-cache-3")
    device = result.device
    assert ask(result.device_token).status_code == 200
    # Joining a group whose policy forbids the data class: a different key, so no stale cache hit.
    device.group = strict
    device.save(update_fields=["group"])
    assert code_of(ask(result.device_token)) == "egress_never"
    device.group = None
    device.save(update_fields=["group"])
    assert ask(result.device_token).status_code == 200
    # A device policy created, then deleted.
    own = make_policy("device", NO_PUBLIC, device=device)
    assert code_of(ask(result.device_token)) == "egress_never"
    services.policy_delete(actor=SYSTEM, policy=own)
    assert ask(result.device_token).status_code == 200


@pytest.fixture
def gateway_process(gateway_upstreams):
    """The platform under gunicorn in its own process, on this test's (committed) database: a gateway
    with its own policy cache, as in production."""
    port = free_port()
    database_url = urlsplit(os.environ["DATABASE_URL"])
    env = os.environ | {
        "DATABASE_URL": urlunsplit(database_url._replace(path="/" + connection.settings_dict["NAME"])),
        "DATABASE_CONN_MAX_AGE": "600",
        "LLM_UPSTREAMS": json.dumps([json.loads(settings.LLM_UPSTREAMS)[0]]),
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    process = subprocess.Popen(
        [str(gunicorn), "fleet.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_policy_change_in_another_process_takes_effect_on_the_next_request(gateway_process, redis_server):
    policy = make_policy()
    result, _ = make_device("cam-cache-4")
    headers = {"Authorization": f"Device {result.device_token}", "X-Fleet-Task": "chat", "X-Fleet-Data-Class": "public"}
    body = {"model": "small", "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.Client(timeout=30) as client:
        for _ in range(3):  # the gateway process has compiled and cached the policy
            assert client.post(gateway_process, json=body, headers=headers).status_code == 200
        # An operator's change, committed by this process (the API's): the gateway process sees it next time.
        services.policy_update(actor=SYSTEM, policy=policy, document=NO_PUBLIC)
        refused = client.post(gateway_process, json=body, headers=headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "egress_never")
        services.policy_update(actor=SYSTEM, policy=Policy.objects.get(pk=policy.pk), document=PRIVACY_FIRST)
        assert client.post(gateway_process, json=body, headers=headers).status_code == 200


@pytest.fixture
def persistent_connection():
    """Connections kept across requests, as in production (the tests' default closes them each time)."""
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = None
    yield
    connection.settings_dict["CONN_MAX_AGE"] = 0
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_gateway_reconnects_when_its_persistent_connection_was_cut(
    gateway_upstreams, redis_server, persistent_connection
):
    # The gateway skips Django's per-request health check (a SELECT 1 round trip); its first query must
    # then recover from a dead connection by itself.
    make_policy()
    result, _ = make_device("cam-cache-5")
    assert ask(result.device_token).status_code == 200
    backend = connection.connection.info.backend_pid
    with psycopg.connect(os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [backend]).fetchone() == (True,)
    assert ask(result.device_token).status_code == 200
    assert connection.connection.info.backend_pid != backend
