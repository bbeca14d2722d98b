"""Console pages of cloud-LLM policies: edit with validation errors inline, the effective policy of a
device with each field's scope, usage and denials by reason, and the viewer who can change nothing."""

import json
import re

import pytest
from django.utils import timezone

from devices import services as device_services
from fleet.celery import app as celery_app
from fleet.models import AuditEvent
from policies import services
from policies.models import Policy
from tests.factories import make_device, make_token, spend_cloud_budget
from tests.policies.conftest import PRIVACY_FIRST, SYSTEM

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_publish(monkeypatch):
    """Saving a policy re-signs and publishes it: run that in process, without a broker."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    monkeypatch.setattr("fleet.mqtt.publish_retained", lambda messages: None)
    yield
    celery_app.conf.task_always_eager = previous


def html(response) -> str:
    return response.content.decode()


def test_editing_a_policy_saves_through_the_service_and_shows_errors_inline(operator_client):
    policy = services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
    url = f"/policies/{policy.pk}/"
    assert "&quot;summarize&quot;" in html(operator_client.get(url))  # the document, escaped in the editor

    broken = dict(PRIVACY_FIRST, tasks={"chat": {"routes": ["teleport"]}})
    response = operator_client.post(url, {"document": json.dumps(broken)})
    assert response.status_code == 400
    body = html(response)
    assert 'data-error-path="tasks.chat.routes' in body
    assert "teleport" in body  # the text is kept as typed
    policy.refresh_from_db()
    assert policy.version == 1

    not_json = operator_client.post(url, {"document": "{tasks: "})
    assert not_json.status_code == 400 and "Not valid JSON" in html(not_json)

    changed = dict(PRIVACY_FIRST, budgets={"day": {"tokens": 5000}})
    saved = operator_client.post(url, {"document": json.dumps(changed)})
    assert saved.status_code == 302
    policy.refresh_from_db()
    assert policy.version == 2 and policy.document["budgets"]["day"]["tokens"] == 5000
    assert AuditEvent.objects.filter(action="policy.update", actor=f"user:{operator_client.user.username}").exists()


def test_new_group_policy_is_created_for_its_group(operator_client):
    device_services.group_create(actor=SYSTEM, name="lab")
    document = {"tasks": {"chat": {"prefer": "local"}}}
    response = operator_client.post(
        "/policies/new/", {"scope": "group", "target": "lab", "document": json.dumps(document)}
    )
    assert response.status_code == 302
    assert Policy.objects.get(scope="group").group.name == "lab"
    missing = operator_client.post("/policies/new/", {"scope": "group", "target": "nope", "document": "{}"})
    assert missing.status_code == 400 and "needs a group" in html(missing)


def test_device_page_shows_the_effective_policy_with_the_scope_of_each_field(viewer_client):
    lab = device_services.group_create(actor=SYSTEM, name="lab")
    services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
    services.policy_create(actor=SYSTEM, scope="group", group=lab, document={"tasks": {"chat": {"prefer": "local"}}})
    result, _key = make_device("cam-1", token=make_token(group=lab))
    denial = {"task": "chat", "data_class": "health", "route": "denied", "reason": "data_class_never"}
    services.usage_record_decision(device=result.device, at=timezone.now(), **denial)
    body = html(viewer_client.get("/devices/cam-1/"))
    prefer = '<tr data-field="tasks.chat.prefer"><td><code>tasks.chat.prefer</code></td><td><code>local</code></td>'
    assert prefer + "<td>group:lab</td>" in body
    assert '<tr data-field="tasks.chat.routes">' in body and "<td>fleet</td>" in body
    assert 'data-reason="data_class_never"' in body


def test_policies_page_lists_scopes_and_usage_by_reason(viewer_client):
    services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
    result, _key = make_device("cam-1")
    for _ in range(3):
        denial = {"task": "chat", "data_class": "public", "route": "denied", "reason": "budget_exhausted"}
        services.usage_record_decision(device=result.device, at=timezone.now(), **denial)
    body = html(viewer_client.get("/policies/"))
    assert 'data-policy="fleet"' in body
    assert 'data-reason="budget_exhausted"' in body
    assert '<td class="num">3</td>' in body


def test_viewer_can_read_a_policy_but_not_change_it(viewer_client):
    policy = services.policy_create(actor=SYSTEM, scope="fleet", document=PRIVACY_FIRST)
    page = html(viewer_client.get(f"/policies/{policy.pk}/"))
    assert "<textarea" not in page and "Save and publish" not in page
    assert viewer_client.post(f"/policies/{policy.pk}/", {"document": "{}"}).status_code == 403
    assert viewer_client.get("/policies/new/").status_code == 403
    assert viewer_client.post("/policies/new/", {"scope": "fleet", "document": "{}"}).status_code == 403
    policy.refresh_from_db()
    assert policy.version == 1


def test_dashboard_shows_cloud_usage_against_each_scopes_budget_and_polls_it(viewer_client):

    clinic = device_services.group_create(actor=SYSTEM, name="clinic")
    in_clinic = make_device("cam-clinic", token=make_token(group=clinic))[0].device
    elsewhere = make_device("cam-lobby")[0].device
    services.policy_create(
        actor=SYSTEM, scope="fleet", document=dict(PRIVACY_FIRST, budgets={"day": {"tokens": 1000, "cost": 1.0}})
    )
    services.policy_create(actor=SYSTEM, scope="group", group=clinic, document={"budgets": {"day": {"tokens": 500}}})
    services.policy_create(
        actor=SYSTEM, scope="device", device=elsewhere, document={"budgets": {"month": {"requests": 4}}}
    )
    for device, tokens in ((in_clinic, 500), (elsewhere, 300)):
        spend_cloud_budget(device, tokens=tokens, cost_micros=100_000)

    page = html(viewer_client.get("/"))
    assert 'id="cloud-budgets"' in page
    fleet_tokens = re.search(r'data-budget="fleet:day:tokens">(.*?)</tr>', page, re.S)[1]
    assert "40.0 %" in fleet_tokens and "800 of 2,000" in fleet_tokens  # 2 devices x 1000
    fleet_cost = re.search(r'data-budget="fleet:day:cost">(.*?)</tr>', page, re.S)[1]
    assert "10.0 %" in fleet_cost and "0.20 of 2.00" in fleet_cost
    clinic_tokens = re.search(r'data-budget="group:clinic:day:tokens">(.*?)</tr>', page, re.S)[1]
    assert "100.0 %" in clinic_tokens and "usage-bar over" in clinic_tokens
    assert clinic_tokens.strip().endswith('<td class="num">1</td>')  # one device has used its whole limit
    lobby_requests = re.search(r'data-budget="device:cam-lobby:month:requests">(.*?)</tr>', page, re.S)[1]
    assert "25.0 %" in lobby_requests and "1 of 4" in lobby_requests
    assert page.index('data-budget="fleet:day:tokens"') < page.index('data-budget="group:clinic:day:tokens"')
    assert page.index('data-budget="group:clinic:day:tokens"') < page.index('data-budget="device:cam-lobby')
    # The card is in the fragment the dashboard polls, so it follows usage without a reload.
    assert 'data-budget="fleet:day:tokens"' in html(viewer_client.get("/", HTTP_HX_REQUEST="true"))


def test_dashboard_without_budgets_says_where_to_set_them(viewer_client):
    assert "No policy sets a budget" in html(viewer_client.get("/"))
