"""The policies REST API: CRUD by role, validation errors with field paths, audit events, the effective
policy with per-field sources, usage and budgets."""

import datetime as dt

import pytest
from django.utils import timezone

from devices.models import DeviceGroup
from fleet.models import AuditEvent
from fleet.services import Actor
from policies import services
from tests.factories import make_device, make_token
from tests.policies.conftest import PRIVACY_FIRST, make_policy

pytestmark = pytest.mark.django_db


def test_operator_creates_and_updates_a_fleet_policy_with_audit_events(operator_api):
    created = operator_api.post("/api/v1/policies/", {"scope": "fleet", "document": PRIVACY_FIRST}, format="json")
    assert created.status_code == 201, created.json()
    policy = created.json()
    assert (policy["scope"], policy["version"]) == ("fleet", 1)
    document = PRIVACY_FIRST | {"budgets": {"day": {"requests": 10}}}
    updated = operator_api.put(f"/api/v1/policies/{policy['id']}/", {"document": document}, format="json")
    assert updated.status_code == 200
    assert updated.json()["version"] == 2
    actions = list(AuditEvent.objects.filter(object_type="policy").values_list("action", "object_id", "actor"))
    username = operator_api.user.username
    assert actions == [("policy.update", "fleet", f"user:{username}"), ("policy.create", "fleet", f"user:{username}")]
    update_event = AuditEvent.objects.get(action="policy.update")
    assert update_event.before["version"] == 1 and update_event.after["document"]["budgets"] == document["budgets"]
    assert operator_api.delete(f"/api/v1/policies/{policy['id']}/").status_code == 204
    assert AuditEvent.objects.filter(action="policy.delete").exists()


def test_invalid_document_is_a_400_naming_the_fields(operator_api):
    bad = {
        "tasks": {"chat": {"routes": ["cloud", "satellite"], "max_output_tokens": "many"}},
        "data_classes": {"health": "maybe"},
    }
    response = operator_api.post("/api/v1/policies/", {"scope": "fleet", "document": bad}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields["document.tasks.chat.routes.1"][0]["code"] == "choice"
    assert fields["document.tasks.chat.max_output_tokens"][0]["code"] == "type"
    assert fields["document.data_classes.health"][0]["code"] == "choice"


def test_scope_targets_are_checked(operator_api):
    group_less = operator_api.post("/api/v1/policies/", {"scope": "group", "document": {}}, format="json")
    assert group_less.status_code == 400
    assert group_less.json()["error"]["code"] == "group_required"
    assert operator_api.post("/api/v1/policies/", {"scope": "fleet", "document": {}}, format="json").status_code == 201
    again = operator_api.post("/api/v1/policies/", {"scope": "fleet", "document": {}}, format="json")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "policy_exists")
    unknown = operator_api.post(
        "/api/v1/policies/", {"scope": "device", "device": "nope-1", "document": {}}, format="json"
    )
    assert unknown.status_code == 400


def test_viewer_reads_but_cannot_write(viewer_api):
    make_policy()
    assert viewer_api.get("/api/v1/policies/").status_code == 200
    assert viewer_api.post("/api/v1/policies/", {"scope": "fleet", "document": {}}, format="json").status_code == 403
    policy_id = viewer_api.get("/api/v1/policies/").json()["results"][0]["id"]
    assert viewer_api.delete(f"/api/v1/policies/{policy_id}/").status_code == 403


def test_devices_cannot_use_the_operator_api(anon_api):
    make_policy()
    result, _ = make_device("cam-api-dev")
    anon_api.credentials(HTTP_AUTHORIZATION=f"Device {result.device_token}")
    assert anon_api.get("/api/v1/policies/").status_code == 403
    assert anon_api.get("/api/v1/devices/cam-api-dev/effective-policy/").status_code == 403


def test_effective_policy_names_the_scope_of_every_field(operator_api):
    make_policy()
    group = DeviceGroup.objects.create(name="clinic")
    make_policy(
        "group", {"data_classes": {"internal": "never"}, "tasks": {"*": {}, "chat": {"models": ["small"]}}}, group=group
    )
    result, _ = make_device("cam-eff-1", token=make_token(group=group))
    make_policy("device", {"budgets": {"day": {"requests": 3}}}, device=result.device)
    body = operator_api.get("/api/v1/devices/cam-eff-1/effective-policy/").json()
    assert body["policy"]["data_classes"]["internal"] == "never"
    assert body["sources"]["data_classes.internal"] == "group:clinic"
    assert body["sources"]["data_classes.health"] == "fleet"
    assert body["policy"]["tasks"]["chat"]["models"] == ["small"]
    assert body["sources"]["tasks.chat.models"] == "group:clinic"
    assert body["policy"]["budgets"]["day"]["requests"] == 3
    assert body["sources"]["budgets.day.requests"] == "device:cam-eff-1"
    assert body["sources"]["budgets.day.tokens"] == "fleet"
    assert body["budgets"]["day"]["left"]["requests"] == 3
    assert operator_api.get("/api/v1/devices/nope-404/effective-policy/").status_code == 404


def test_usage_shows_cloud_usage_by_model_and_decisions_by_reason(operator_api):
    make_policy("fleet", PRIVACY_FIRST | {"budgets": {"day": {"requests": 5, "tokens": 10_000}}})
    result, _ = make_device("cam-usage-1")
    device = result.device
    now = timezone.now()
    reservation = services.budget_reserve(
        device=device,
        document=services_document(device),
        task="chat",
        data_class="public",
        model="small",
        tokens=300,
        cost_micros=900,
        at=now,
    )
    services.budget_settle(
        reservation=reservation,
        reason="cloud_allowed",
        upstream="primary",
        tokens_in=40,
        tokens_out=10,
        cost_micros=120,
    )
    services.usage_record_decision(
        device=device, task="chat", data_class="health", route="deny", reason="egress_never", at=now
    )
    body = operator_api.get("/api/v1/devices/cam-usage-1/llm-usage/?window=day").json()
    assert body["cloud_by_model"] == [
        {"source": "gateway", "model": "small", "tokens_in": 40, "tokens_out": 10, "cost": 0.00012, "requests": 1}
    ]
    reasons = {(r["route"], r["reason"]): r["requests"] for r in body["decisions_by_reason"]}
    assert reasons == {("cloud", "cloud_allowed"): 1, ("deny", "egress_never"): 1}
    assert body["budgets"]["day"]["used"] == {"tokens": 50, "cost": 0.00012, "requests": 1}
    assert body["budgets"]["day"]["left"] == {"requests": 4, "tokens": 9950}
    fleet = operator_api.get("/api/v1/llm-usage/?window=month").json()
    assert sum(r["requests"] for r in fleet["decisions_by_reason"]) == 2
    assert operator_api.get("/api/v1/llm-usage/?window=fortnight").status_code == 400
    # An old row falls outside the window.
    services.usage_record_decision(
        device=device, task="chat", data_class="public", route="deny", reason="no_rule", at=now - dt.timedelta(days=40)
    )
    assert (
        sum(r["requests"] for r in operator_api.get("/api/v1/llm-usage/?window=month").json()["decisions_by_reason"])
        == 2
    )


def services_document(device):
    from policies.selectors import effective_policy

    return effective_policy(device).document


def test_device_fetches_its_signed_policy_over_http(anon_api, django_capture_on_commit_callbacks):
    from fleet_agent.policy import PolicyKeeper
    from fleet_agent.policy.signature import load_public_key
    from policies.signing import policy_public_key_pem

    policy = make_policy()
    result, _ = make_device("cam-http-1")
    anon_api.credentials(HTTP_AUTHORIZATION=f"Device {result.device_token}")
    keeper = PolicyKeeper(public_key=load_public_key(policy_public_key_pem()), device_id="cam-http-1")
    # Never published (just enrolled): signed on demand, and the MQTT copy is brought up to date after commit.
    with django_capture_on_commit_callbacks() as callbacks:
        first = anon_api.get("/api/v1/device/policy/")
    assert first.status_code == 200
    assert keeper.offer(first.content) and keeper.version == 1
    assert len(callbacks) == 1
    with django_capture_on_commit_callbacks() as callbacks:
        assert anon_api.get("/api/v1/device/policy/").content == first.content  # unchanged: same envelope
    assert callbacks == []
    services.policy_update(
        actor=Actor.system("tests"), policy=policy, document=PRIVACY_FIRST | {"offline": {"mode": "deny"}}
    )
    assert keeper.offer(anon_api.get("/api/v1/device/policy/").content) and keeper.version == 2
