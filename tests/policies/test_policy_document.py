"""The pure policy module (agent package): document validation, inheritance, decide(), signatures."""

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_agent.policy import (
    BudgetLeft,
    PolicyKeeper,
    compile_policy,
    decide,
    merge_policies,
    sign_policy,
    validate_document,
    verify_signed_policy,
)
from fleet_agent.policy.signature import PolicyVerificationError

FLEET = {
    "tasks": {
        "summarize": {"routes": ["local", "cloud"], "models": ["small", "large"], "max_input_tokens": 4000},
        "chat": {"routes": ["cloud"], "models": ["small"], "prefer": "cloud"},
        "*": {"routes": ["local"]},
    },
    "data_classes": {"public": "allow", "internal": "allow", "personal": "redact_then_cloud", "health": "never"},
    "budgets": {"day": {"tokens": 100_000, "cost": 5.0}},
    "locks": ["tasks.summarize.prefer"],
}


def effective(*docs):
    labels = ["fleet", "group:plant-a", "device:cam-1"]
    return merge_policies(list(zip(labels, docs, strict=False)))


def test_valid_document_has_no_errors():
    assert validate_document(FLEET) == []


def test_validation_names_every_bad_field_by_path():
    errors = validate_document(
        {
            "tasks": {"chat": {"routes": ["cloud", "moon"], "max_input_tokens": -1, "colour": "red"}},
            "data_classes": {"health": "sometimes"},
            "budgets": {"week": {}, "day": {"cost": "lots"}},
            "expires_at": "tomorrow",
        }
    )
    paths = {(e.path, e.code) for e in errors}
    assert ("tasks.chat.routes.1", "choice") in paths
    assert ("tasks.chat.max_input_tokens", "range") in paths
    assert ("tasks.chat.colour", "unknown_field") in paths
    assert ("data_classes.health", "choice") in paths
    assert ("budgets.week", "unknown_field") in paths
    assert ("budgets.day.cost", "type") in paths
    assert ("expires_at", "invalid") in paths


def test_restrictive_fields_take_the_strictest_value_and_name_their_source():
    group = {"tasks": {"summarize": {"models": ["large", "small", "extra"], "max_input_tokens": 8000}, "*": {}}}
    device = {"data_classes": {"internal": "never", "health": "allow"}, "budgets": {"day": {"tokens": 500}}}
    result = effective(FLEET, group, device)
    doc, src = result.document, result.sources
    assert doc["tasks"]["summarize"]["models"] == ["large", "small"]  # intersection, order from the nearest
    assert src["tasks.summarize.models.order"] == "group:plant-a"
    assert doc["tasks"]["summarize"]["max_input_tokens"] == 4000
    assert src["tasks.summarize.max_input_tokens"] == "fleet"
    assert doc["data_classes"]["internal"] == "never"
    assert src["data_classes.internal"] == "device:cam-1"
    assert doc["data_classes"]["health"] == "never"  # the device cannot loosen it
    assert src["data_classes.health"] == "fleet"
    assert doc["budgets"]["day"] == {"tokens": 500, "cost": 5.0}
    assert src["budgets.day.tokens"] == "device:cam-1"
    assert src["budgets.day.cost"] == "fleet"


def test_lower_scope_cannot_add_a_task_type_its_parent_does_not_allow():
    fleet = {"tasks": {"chat": {"routes": ["cloud"], "models": ["small"]}}}
    device = {"tasks": {"chat": {}, "summarize": {"routes": ["cloud"], "models": ["small"]}}}
    doc = effective(fleet, device).document
    assert "summarize" not in doc["tasks"]
    decision = decide(compile_policy(doc), task="summarize", data_class="public")
    assert (decision.route, decision.reason) == ("deny", "no_rule")


def test_preferences_come_from_the_nearest_scope_unless_locked():
    group = {"tasks": {"*": {"prefer": "cloud"}, "summarize": {"prefer": "cloud"}, "chat": {"prefer": "local"}}}
    result = effective(FLEET, group)
    assert result.document["tasks"]["chat"]["prefer"] == "local"
    assert result.sources["tasks.chat.prefer"] == "group:plant-a"
    assert result.document["tasks"]["summarize"]["prefer"] == "local"  # locked at fleet
    assert result.sources["tasks.summarize.prefer"] == "default"


def test_decide_covers_the_main_reason_codes():
    policy = compile_policy(effective(FLEET).document)
    assert decide(policy, task="chat", data_class="public") == decide(policy, task="chat", data_class="public")
    chat = decide(policy, task="chat", data_class="public", local_available=False)
    assert (chat.route, chat.model, chat.reason) == ("cloud", "small", "cloud_allowed")
    assert decide(policy, task="chat", data_class="health").reason == "egress_never"
    assert decide(policy, task="chat", data_class="secret").reason == "data_class_unknown"
    personal = decide(policy, task="chat", data_class="personal")
    assert (personal.route, personal.redact, personal.reason) == ("cloud", True, "redact_then_cloud")
    assert decide(policy, task="chat", data_class="public", model="huge").reason == "model_not_allowed"
    assert decide(policy, task="summarize", data_class="public").reason == "local_preferred"
    over = decide(policy, task="summarize", data_class="public", tokens_in=5000, local_available=False)
    assert (over.route, over.reason) == ("deny", "tokens_over_limit")
    spent = decide(policy, task="chat", data_class="public", budget_left=BudgetLeft(tokens=10), tokens_in=50)
    assert (spent.route, spent.reason) == ("deny", "budget_exhausted")  # chat has no local route
    assert decide(policy, task="vision.describe", data_class="public").route == "local"


def test_offline_behaviour_follows_the_offline_mode():
    base = {
        "tasks": {"chat": {"routes": ["local", "cloud"], "models": ["small"], "prefer": "cloud"}},
        "data_classes": {"public": "allow"},
    }
    for mode, route, reason in [
        ("local", "local", "offline_local"),
        ("queue", "deny", "offline_queue"),
        ("deny", "deny", "offline_deny"),
    ]:
        policy = compile_policy(effective(base | {"offline": {"mode": mode}}).document)
        decision = decide(policy, task="chat", data_class="public", connectivity="offline")
        assert (decision.route, decision.reason) == (route, reason)


def test_budget_exhausted_denies_when_the_policy_says_deny():
    doc = {
        "tasks": {"chat": {"routes": ["local", "cloud"], "models": ["small"], "prefer": "cloud"}},
        "data_classes": {"public": "allow"},
        "on_budget_exhausted": "deny",
    }
    policy = compile_policy(effective(doc).document)
    decision = decide(policy, task="chat", data_class="public", budget_left=BudgetLeft(requests=0))
    assert (decision.route, decision.reason) == ("deny", "budget_exhausted")


def test_expired_policy_stops_cloud_after_the_offline_grace():
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    doc = {
        "tasks": {"chat": {"routes": ["cloud"], "models": ["small"]}},
        "data_classes": {"public": "allow"},
        "expires_at": expires.isoformat(),
        "offline_grace_s": 3600,
    }
    policy = compile_policy(effective(doc).document)
    later = expires.timestamp() + 60
    assert decide(policy, task="chat", data_class="public", now=later).reason == "policy_expired"
    offline = decide(policy, task="chat", data_class="public", now=later, connectivity="offline")
    assert offline.reason == "offline_deny"  # within the grace the policy still holds; offline mode decides


def payload(version=1, device_id="cam-1"):
    return {
        "v": 1,
        "device_id": device_id,
        "version": version,
        "issued_at": "2030-01-01T00:00:00+00:00",
        "policy": effective(FLEET).document,
        "prices": {},
    }


def test_signed_policy_verifies_and_a_tampered_one_does_not():
    key = Ed25519PrivateKey.generate()
    raw = sign_policy(key, payload())
    assert verify_signed_policy(raw, key.public_key(), device_id="cam-1")["version"] == 1
    tampered = raw.replace(b'"health":"never"', b'"health":"allow"')
    assert tampered != raw
    with pytest.raises(PolicyVerificationError) as exc:
        verify_signed_policy(tampered, key.public_key(), device_id="cam-1")
    assert exc.value.code == "bad_signature"
    with pytest.raises(PolicyVerificationError) as exc:
        verify_signed_policy(raw, key.public_key(), device_id="cam-2")
    assert exc.value.code == "wrong_device"


def test_keeper_keeps_the_last_good_policy():
    key = Ed25519PrivateKey.generate()
    keeper = PolicyKeeper(public_key=key.public_key(), device_id="cam-1")
    assert keeper.offer(sign_policy(key, payload(version=2)))
    assert not keeper.offer(sign_policy(Ed25519PrivateKey.generate(), payload(version=3)))
    assert keeper.last_error.code == "bad_signature"
    assert not keeper.offer(sign_policy(key, payload(version=1)))  # replayed older policy
    assert keeper.last_error.code == "stale_version"
    assert not keeper.offer(b"garbage")
    assert keeper.version == 2
    assert keeper.offer(sign_policy(key, payload(version=3)))


def test_budget_left_takes_the_tightest_window_per_field():
    from fleet_agent.policy import budget_left

    doc = {"budgets": {"day": {"tokens": 1000, "requests": 10}, "month": {"tokens": 5000, "cost": 2.0}}}
    used = {"day": {"tokens": 100, "requests": 10}, "month": {"tokens": 4500, "cost": 0.5}}
    assert budget_left(doc, used) == BudgetLeft(tokens=500, cost=1.5, requests=0)
    assert budget_left({"budgets": {}}, used) is None


def test_keeper_restores_its_last_good_policy_after_a_restart(tmp_path):
    key = Ed25519PrivateKey.generate()
    store = tmp_path / "policy.json"
    keeper = PolicyKeeper(public_key=key.public_key(), device_id="cam-1", path=store)
    assert not keeper.restore()  # nothing stored yet
    assert keeper.offer(sign_policy(key, payload(version=4)))
    assert not keeper.offer(sign_policy(Ed25519PrivateKey.generate(), payload(version=5)))  # not stored
    restarted = PolicyKeeper(public_key=key.public_key(), device_id="cam-1", path=store)
    assert restarted.restore() and restarted.version == 4
    store.write_bytes(store.read_bytes().replace(b'"version":4', b'"version":9'))  # tampered on disk
    tampered = PolicyKeeper(public_key=key.public_key(), device_id="cam-1", path=store)
    assert not tampered.restore()
    assert tampered.last_error.code == "bad_signature"
