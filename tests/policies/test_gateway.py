"""The OpenAI-compatible gateway against real loopback upstreams: denials with reason codes, fallback,
streaming, settlement, and device isolation."""

import json

import pytest
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.models import DeviceGroup
from policies.models import BudgetCounter, LlmUsage
from tests.factories import make_device
from tests.policies.conftest import PRIVACY_FIRST, make_policy

pytestmark = pytest.mark.django_db


def ask(
    token,
    *,
    task="chat",
    data_class="public",
    model="small",
    content="Hello there",
    scheme="Device",
    extra_headers=None,
    **body,
):
    headers = {"Authorization": f"{scheme} {token}", "X-Fleet-Task": task, "X-Fleet-Data-Class": data_class}
    headers.update(extra_headers or {})
    payload = {"model": model, "messages": [{"role": "user", "content": content}]} | body
    return Client().post("/v1/chat/completions", json.dumps(payload), content_type="application/json", headers=headers)


@pytest.fixture
def device():
    make_policy()
    result, _ = make_device("cam-gw-1")
    return result.device, result.device_token


def test_allowed_request_is_forwarded_with_the_provider_key_and_settled(gateway_upstreams, device):
    primary, backup = gateway_upstreams
    dev, token = device
    response = ask(token)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["choices"][0]["message"]["content"].startswith("hello")
    sent = primary.state.received[0]
    assert sent["headers"]["Authorization"] == "Bearer sk-primary-secret"
    assert token not in json.dumps(sent)  # the provider never sees the device's credential
    assert sent["body"]["model"] == "primary-small-v1"
    assert sent["body"]["max_tokens"] == 200  # the policy's output cap is forwarded
    assert backup.state.received == []
    row = LlmUsage.objects.get(device=dev)
    assert (row.state, row.route, row.reason, row.upstream) == ("settled", "cloud", "cloud_allowed", "primary")
    assert (row.tokens_in, row.tokens_out) == (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    day = BudgetCounter.objects.get(device=dev, window="day")
    assert day.tokens == row.tokens_in + row.tokens_out  # the reservation was replaced by the real usage
    assert day.requests == 1
    assert day.cost_micros == row.cost_micros > 0


def test_openai_bearer_scheme_works_with_the_device_token(gateway_upstreams, device):
    assert ask(device[1], scheme="Bearer").status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data_class": "health"}, 403, "egress_never"),
        ({"data_class": "secret"}, 403, "data_class_unknown"),
        ({"model": "huge"}, 403, "model_not_allowed"),
        ({"task": "vision.describe"}, 403, "route_not_allowed"),
        ({"max_tokens": 500}, 403, "tokens_over_limit"),
        ({"content": "x" * 5000}, 403, "tokens_over_limit"),
        ({"data_class": "personal"}, 403, "redaction_required"),
    ],
)
def test_denials_are_openai_errors_with_reason_codes(gateway_upstreams, device, kwargs, status, code):
    primary, _ = gateway_upstreams
    response = ask(device[1], **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"message", "type", "code"}
    assert primary.state.received == []  # nothing left the platform
    assert LlmUsage.objects.get(device=device[0]).reason == code  # every decision is recorded


def test_redacted_personal_data_may_go(gateway_upstreams, device):
    response = ask(device[1], data_class="personal", extra_headers={"X-Fleet-Redacted": "1"})
    assert response.status_code == 200
    assert LlmUsage.objects.get(device=device[0]).reason == "redact_then_cloud"


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("", "device_token_missing"),
        ("Device fdt_not-a-real-token", "device_token_invalid"),
        ("Token abc", "device_token_missing"),
    ],
)
def test_auth_failures_are_401_openai_errors(gateway_upstreams, authorization, code):
    response = Client().post(
        "/v1/chat/completions",
        "{}",
        content_type="application/json",
        headers={"Authorization": authorization} if authorization else {},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "authentication_error"


def test_missing_task_header_is_a_400(gateway_upstreams, device):
    response = Client().post(
        "/v1/chat/completions", "{}", content_type="application/json", headers={"Authorization": f"Device {device[1]}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "task_or_data_class_missing"


def test_no_fleet_policy_means_deny(gateway_upstreams):
    result, _ = make_device("cam-gw-nopolicy")
    response = ask(result.device_token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_rule"


def test_falls_back_to_the_second_upstream_when_the_first_fails(gateway_upstreams, device):
    primary, backup = gateway_upstreams
    primary.state.fail_with = 503
    response = ask(device[1])
    assert response.status_code == 200
    assert len(primary.state.received) == 1
    assert backup.state.received[0]["body"]["model"] == "backup-small-v1"
    assert backup.state.received[0]["headers"]["Authorization"] == "Bearer sk-backup-secret"
    assert LlmUsage.objects.get(device=device[0]).upstream == "backup"


def test_all_upstreams_down_is_a_502_and_releases_the_reservation(gateway_upstreams, device):
    primary, backup = gateway_upstreams
    primary.state.fail_with = 500
    backup.state.fail_with = 502
    response = ask(device[1])
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    day = BudgetCounter.objects.get(device=device[0], window="day")
    assert (day.tokens, day.cost_micros, day.requests) == (0, 0, 0)
    assert LlmUsage.objects.get(device=device[0]).state == "released"


def test_streaming_passes_chunks_through_and_settles_from_the_usage_chunk(gateway_upstreams, device):
    primary, _ = gateway_upstreams
    response = ask(device[1], stream=True)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    raw = b"".join(response.streaming_content).decode()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    words = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1] if json.loads(e)["choices"]]
    assert "".join(words).split() == ["hello"] * 5
    assert primary.state.received[0]["body"]["stream_options"] == {"include_usage": True}
    row = LlmUsage.objects.get(device=device[0])
    usage = json.loads(events[-2])["usage"]
    assert (row.state, row.tokens_in, row.tokens_out) == ("settled", usage["prompt_tokens"], 5)
    assert BudgetCounter.objects.get(device=device[0], window="day").tokens == usage["total_tokens"]


def test_device_cannot_spend_another_devices_budget(gateway_upstreams):
    make_policy()
    group = DeviceGroup.objects.create(name="tight")
    make_policy("group", {"budgets": {"day": {"requests": 1}}}, group=group)
    rich, _ = make_device("cam-rich")
    poor, _ = make_device("cam-poor")
    poor.device.group = group
    poor.device.save()
    assert ask(poor.device_token).status_code == 200
    assert ask(poor.device_token).json()["error"]["code"] == "budget_exhausted"
    # The rich device's requests are charged to the rich device only, and don't use the poor one's budget.
    assert ask(rich.device_token).status_code == 200
    assert BudgetCounter.objects.get(device=poor.device, window="day").requests == 1
    assert BudgetCounter.objects.get(device=rich.device, window="day").requests == 1
    # Naming the other device anywhere in the request changes nothing: the token decides whose budget it is.
    response = ask(poor.device_token, extra_headers={"X-Fleet-Device": "cam-rich"}, user="cam-rich")
    assert response.status_code == 429


def test_rate_limit_is_a_429(gateway_upstreams):
    make_policy("fleet", PRIVACY_FIRST | {"rate_limit": {"requests_per_minute": 2}})
    for attempt in range(3):  # three requests in one clock minute; start again if a minute boundary fell between
        result, _ = make_device(f"cam-rate-{attempt}")
        minute = timezone.now().replace(second=0, microsecond=0)
        codes = [ask(result.device_token).status_code for _ in range(3)]
        if timezone.now().replace(second=0, microsecond=0) == minute:
            break
    assert codes == [200, 200, 429]
    assert LlmUsage.objects.filter(device=result.device, reason="rate_limited").count() == 1


def test_pending_device_cannot_use_the_gateway(gateway_upstreams):
    from tests.factories import make_token

    make_policy()
    result, _ = make_device("cam-pending", token=make_token(auto_accept=False))
    assert ask(result.device_token).status_code == 403


def test_a_refusal_by_one_window_does_not_charge_the_others(gateway_upstreams):
    make_policy("fleet", PRIVACY_FIRST | {"budgets": {"day": {"requests": 5}, "hour": {"requests": 1}}})
    result, _ = make_device("cam-windows")
    assert ask(result.device_token).status_code == 200
    refused = ask(result.device_token)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "budget_exhausted")
    assert "hour" in refused.json()["error"]["message"]
    counters = dict(BudgetCounter.objects.filter(device=result.device).values_list("window", "requests"))
    assert counters == {"day": 1, "hour": 1}  # the day window's share of the refused request was rolled back


def test_several_choices_reserve_budget_for_each(gateway_upstreams):
    make_policy("fleet", PRIVACY_FIRST | {"budgets": {"day": {"tokens": 500}}})
    result, _ = make_device("cam-choices")
    too_many = ask(result.device_token, n=3)  # 3 x 200 output tokens cannot fit 500
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (429, "budget_exhausted")
    assert ask(result.device_token, n=1).status_code == 200
    assert ask(result.device_token, n=0).json()["error"]["code"] == "invalid_n"


def test_tool_definitions_count_towards_the_input_estimate(gateway_upstreams, device):
    tools = [{"type": "function", "function": {"name": "lookup", "description": "x" * 5000}}]
    response = ask(device[1], tools=tools)  # the messages are short, the prompt is not
    assert response.json()["error"]["code"] == "tokens_over_limit"


def test_streaming_falls_back_before_the_first_byte(gateway_upstreams, device):
    primary, backup = gateway_upstreams
    primary.state.fail_with = 500
    response = ask(device[1], stream=True)
    assert response.status_code == 200
    raw = b"".join(response.streaming_content).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    assert backup.state.received[0]["body"]["stream"] is True
    assert LlmUsage.objects.get(device=device[0]).upstream == "backup"


def test_revoked_device_is_refused_with_401(gateway_upstreams, device):
    from devices import services as device_services
    from fleet.services import Actor

    device_services.device_revoke(actor=Actor.system("tests"), device=device[0], reason="stolen")
    response = ask(device[1])
    assert (response.status_code, response.json()["error"]["code"]) == (401, "device_token_invalid")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Fleet-Task": "x" * 300}, "invalid_task_or_data_class"),
        ({"X-Fleet-Data-Class": "Health Data"}, "invalid_task_or_data_class"),
        ({"X-Fleet-Data-Class": "*"}, "invalid_task_or_data_class"),
    ],
)
def test_bad_task_or_data_class_headers_are_400(gateway_upstreams, device, headers, code):
    response = ask(device[1], extra_headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)


def test_bad_bodies_are_openai_style_400s(gateway_upstreams, device):
    headers = {"Authorization": f"Device {device[1]}", "X-Fleet-Task": "chat", "X-Fleet-Data-Class": "public"}
    client = Client()
    for raw, code in [
        (b"{not json", "invalid_json"),
        (b"[]", "messages_missing"),
        (b'{"messages": []}', "messages_missing"),
        (b'{"messages": [null]}', "invalid_messages"),
        (b'{"messages": [{"content": "no role"}]}', "invalid_messages"),
    ]:
        response = client.post("/v1/chat/completions", raw, content_type="application/json", headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]})
    response = client.post("/v1/chat/completions", huge, content_type="application/json", headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "request_too_large")
    for field, value, code in [
        ("max_tokens", 10**30, "invalid_max_tokens"),
        ("max_tokens", 0, "invalid_max_tokens"),
        ("model", ["small"], "invalid_model"),
    ]:
        body = {"messages": [{"role": "user", "content": "hi"}], field: value}
        response = client.post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=headers
        )
        assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    streamed = ask(device[1], stream=True, stream_options="yes please")
    assert streamed.status_code == 200
    b"".join(streamed.streaming_content)
    response = client.get("/v1/chat/completions", headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
gateway_bodies = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": json_values}),
                max_size=3,
            ),
        ),
        "model": st.one_of(json_values, st.sampled_from(["small", "large", "auto", ""])),
        "max_tokens": json_values,
        "n": json_values,
        "stream": st.booleans(),
        "stream_options": json_values,
        "tools": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=gateway_bodies,
    task=st.sampled_from(["chat", "summarize", "x"]),
    data_class=st.sampled_from(["public", "personal", "health", "zzz"]),
)
def test_any_request_body_gets_an_answer_never_a_500(gateway_upstreams, device, body, task, data_class):
    response = Client().post(
        "/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Device {device[1]}", "X-Fleet-Task": task, "X-Fleet-Data-Class": data_class},
    )
    if response.status_code == 200 and body.get("stream") is True:
        b"".join(response.streaming_content)
    assert response.status_code < 500, response.content
    if response.status_code >= 400 and response.get("Content-Type") == "application/json":
        assert set(response.json()["error"]) >= {"message", "code"}
