"""Property-based tests of inheritance and decide(): for any documents and any request,
a lower scope never permits more than its parents, and ``never`` data never goes to the cloud."""

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_agent.policy import BudgetLeft, compile_policy, decide, merge_policies, validate_document
from fleet_agent.policy.decide import permitted
from fleet_agent.policy.document import EGRESS_ORDER, EXHAUSTED_ORDER, OFFLINE_ORDER

TASKS = ["chat", "summarize", "*"]
CLASSES = ["public", "personal", "health"]
MODELS = ["small", "large", "huge"]
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def optional(strategy):
    return st.one_of(st.none(), strategy)


def sublist(items):
    return st.lists(st.sampled_from(items), unique=True, max_size=len(items))


task_rule = st.fixed_dictionaries(
    {},
    optional={
        "routes": sublist(["local", "cloud"]),
        "models": sublist(MODELS),
        "max_input_tokens": st.integers(0, 2000),
        "max_output_tokens": st.integers(0, 2000),
        "prefer": st.sampled_from(["local", "cloud"]),
        "allow_metered": st.booleans(),
    },
)
scope_document = st.fixed_dictionaries(
    {},
    optional={
        "tasks": st.dictionaries(st.sampled_from(TASKS), task_rule, max_size=3),
        "data_classes": st.dictionaries(st.sampled_from(CLASSES), st.sampled_from(EGRESS_ORDER), max_size=3),
        "on_budget_exhausted": st.sampled_from(EXHAUSTED_ORDER),
        "offline": st.fixed_dictionaries({}, optional={"mode": st.sampled_from(OFFLINE_ORDER)}),
        "locks": sublist(["tasks.chat.prefer", "tasks.*.prefer", "tasks.summarize", "data_classes"]),
        "expires_at": st.sampled_from([(NOW + dt.timedelta(hours=h)).isoformat() for h in (-2, -1, 1, 2)]),
        "offline_grace_s": st.sampled_from([0, 3600, 86400]),
    },
)
request = st.fixed_dictionaries(
    {
        "task": st.sampled_from(["chat", "summarize", "vision.describe"]),
        "data_class": st.sampled_from([*CLASSES, "unlisted"]),
        "tokens_in": st.integers(0, 3000),
        "tokens_out": st.integers(0, 3000),
        "connectivity": st.sampled_from(["online", "metered", "offline"]),
        "budget_left": optional(
            st.builds(
                BudgetLeft, optional(st.integers(0, 6000)), optional(st.floats(0, 2)), optional(st.integers(0, 3))
            )
        ),
        "est_cost": st.floats(0, 1),
        "local_available": st.booleans(),
        "model": optional(st.sampled_from(MODELS)),
    }
)


def compiled(docs):
    labels = ["fleet", "group", "device"]
    return compile_policy(merge_policies(list(zip(labels, docs, strict=False))).document)


@settings(max_examples=400, deadline=None)
@given(parents=st.lists(scope_document, min_size=1, max_size=2), child=scope_document, inputs=request)
def test_child_scope_never_permits_more_than_its_parents(parents, child, inputs):
    assert all(validate_document(doc) == [] for doc in [*parents, child])
    inputs = inputs | {"now": NOW.timestamp()}
    parent = compiled(parents)
    merged = compiled([*parents, child])
    parent_local, parent_models, parent_redact = permitted(parent, **inputs)
    child_local, child_models, child_redact = permitted(merged, **inputs)
    assert child_local <= parent_local
    assert child_models <= parent_models
    if child_models:
        assert child_redact >= parent_redact
    decision = decide(merged, **inputs)
    if decision.route == "local":
        assert parent_local
    elif decision.route == "cloud":
        assert decision.model in parent_models
        assert decision.redact >= parent_redact


@settings(max_examples=400, deadline=None)
@given(
    docs=st.lists(scope_document, min_size=1, max_size=3),
    never_at=st.integers(0, 2),
    inputs=request,
)
def test_never_data_never_routes_to_cloud(docs, never_at, inputs):
    never_at = min(never_at, len(docs) - 1)
    docs[never_at] = docs[never_at] | {"data_classes": docs[never_at].get("data_classes", {}) | {"health": "never"}}
    decision = decide(compiled(docs), **(inputs | {"data_class": "health", "now": NOW.timestamp()}))
    assert decision.route != "cloud"
    assert decision.reason != "cloud_allowed"


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(scope_document, min_size=1, max_size=3), inputs=request)
def test_a_data_class_no_scope_lists_never_routes_to_cloud(docs, inputs):
    decision = decide(compiled(docs), **(inputs | {"data_class": "unlisted", "now": NOW.timestamp()}))
    assert decision.route != "cloud"


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(scope_document, min_size=1, max_size=3), inputs=request)
def test_every_decision_has_a_known_reason(docs, inputs):
    from fleet_agent.policy.decide import REASONS

    decision = decide(compiled(docs), **(inputs | {"now": NOW.timestamp()}))
    assert decision.route in {"local", "cloud", "deny"}
    assert decision.reason in REASONS
    assert (decision.model is not None) == (decision.route == "cloud" or decision.reason == "offline_queue")
