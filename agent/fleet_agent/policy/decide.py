"""``decide()``: one pure function, used by the agent before every request and by the gateway again.

Inputs: the (compiled) effective policy, the task type, the data class, the estimated tokens in and out,
the connectivity, the budget left, whether a local model is available, and optionally the cloud model
asked for. Output: ``local``, ``cloud`` with a model, or ``deny``, always with a reason code.

Cloud is permitted only if every check passes (see ``_cloud_block``); each check is monotone in the
merged policy (smaller allowlists, stricter egress, smaller limits only ever block more), which is why a
lower scope can never make a decision looser than its parents allow. A data class no scope mentions is
treated as ``never``; a task type no scope allows is denied (``no_rule``).
"""

import datetime as dt
import time
from dataclasses import dataclass

from fleet_agent.policy.document import parse_time

LOCAL = "local"
CLOUD = "cloud"
DENY = "deny"

ONLINE = "online"
METERED = "metered"
OFFLINE = "offline"
CONNECTIVITY = (ONLINE, METERED, OFFLINE)

# Every reason code decide() returns (docs/policies.md explains each).
REASONS = (
    "cloud_allowed",
    "redact_then_cloud",
    "local_preferred",
    "no_rule",
    "route_not_allowed",
    "policy_expired",
    "data_class_unknown",
    "egress_never",
    "model_not_allowed",
    "tokens_over_limit",
    "metered_connection",
    "budget_exhausted",
    "offline_local",
    "offline_queue",
    "offline_deny",
)
# Reasons only the gateway gives (it knows the server's budget counters and its upstreams); a device
# that got one back reports it on llm/usage like its own.
GATEWAY_REASONS = (
    "rate_limited",
    "redaction_required",
    "model_not_configured",
    "upstream_unavailable",
    "upstream_rejected",
)


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # local, cloud or deny
    reason: str
    model: str | None = None  # the cloud model alias, for route == cloud
    redact: bool = False  # the data must be redacted before it leaves the device


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    """What is left of the tightest budget window; None means unlimited."""

    tokens: int | None = None
    cost: float | None = None
    requests: int | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    local: bool
    cloud: bool
    models: tuple[str, ...]
    model_set: frozenset
    max_in: int | None
    max_out: int | None
    prefer_cloud: bool
    allow_metered: bool


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """An effective policy document turned into the lookups decide() needs (compile once, decide often)."""

    rules: dict
    egress: dict
    deny_when_exhausted: bool
    offline_mode: str
    expires_at: float | None  # epoch seconds
    offline_grace_s: int


def compile_policy(document: dict) -> CompiledPolicy:
    rules = {}
    for name, rule in document.get("tasks", {}).items():
        models = tuple(rule.get("models", ()))
        rules[name] = _Rule(
            local="local" in rule.get("routes", ()),
            cloud="cloud" in rule.get("routes", ()),
            models=models,
            model_set=frozenset(models),
            max_in=rule.get("max_input_tokens"),
            max_out=rule.get("max_output_tokens"),
            prefer_cloud=rule.get("prefer") == "cloud",
            allow_metered=rule.get("allow_metered", True),
        )
    expires = parse_time(document["expires_at"]) if document.get("expires_at") else None
    return CompiledPolicy(
        rules=rules,
        egress=dict(document.get("data_classes", {})),
        deny_when_exhausted=document.get("on_budget_exhausted", "local") == "deny",
        offline_mode=document.get("offline", {}).get("mode", "local"),
        expires_at=expires.timestamp() if expires else None,
        offline_grace_s=document.get("offline_grace_s", 0) or 0,
    )


def _cloud_block(
    policy: CompiledPolicy,
    rule: _Rule,
    data_class: str,
    tokens_in: int,
    tokens_out: int,
    connectivity: str,
    budget_left: BudgetLeft | None,
    est_cost: float,
    model: str | None,
    now: float,
) -> tuple[str | None, str | None, bool]:
    """(reason cloud is not permitted or None, the model to use, redact) for everything but offline."""
    if not rule.cloud:
        return "route_not_allowed", None, False
    if policy.expires_at is not None:
        grace = policy.offline_grace_s if connectivity == OFFLINE else 0
        if now > policy.expires_at + grace:
            return "policy_expired", None, False
    egress = policy.egress.get(data_class)
    if egress is None:
        return "data_class_unknown", None, False
    if egress == "never":
        return "egress_never", None, False
    if model is None:
        if not rule.models:
            return "model_not_allowed", None, False
        model = rule.models[0]
    elif model not in rule.model_set:
        return "model_not_allowed", None, False
    if (rule.max_in is not None and tokens_in > rule.max_in) or (
        rule.max_out is not None and tokens_out > rule.max_out
    ):
        return "tokens_over_limit", None, False
    if connectivity == METERED and not rule.allow_metered:
        return "metered_connection", None, False
    if budget_left is not None and (
        (budget_left.requests is not None and budget_left.requests < 1)
        or (budget_left.tokens is not None and budget_left.tokens < tokens_in + tokens_out)
        or (budget_left.cost is not None and budget_left.cost < est_cost)
    ):
        return "budget_exhausted", None, False
    return None, model, egress == "redact_then_cloud"


def decide(
    policy: CompiledPolicy,
    *,
    task: str,
    data_class: str,
    tokens_in: int = 0,
    tokens_out: int = 0,
    connectivity: str = ONLINE,
    budget_left: BudgetLeft | None = None,
    est_cost: float = 0.0,
    local_available: bool = True,
    model: str | None = None,
    now: float | None = None,
) -> Decision:
    rule = policy.rules.get(task)
    if rule is None:
        rule = policy.rules.get("*")
        if rule is None:
            return Decision(DENY, "no_rule")
    local_ok = rule.local and local_available
    block, chosen, redact = _cloud_block(
        policy,
        rule,
        data_class,
        tokens_in,
        tokens_out,
        connectivity,
        budget_left,
        est_cost,
        model,
        time.time() if now is None else now,
    )
    if block is None:
        if local_ok and not rule.prefer_cloud:
            return Decision(LOCAL, "local_preferred")
        if connectivity == OFFLINE:
            mode = policy.offline_mode
            if mode == "local" and local_ok:
                return Decision(LOCAL, "offline_local")
            if mode == "queue":
                return Decision(DENY, "offline_queue", chosen, redact)
            # mode deny, or mode local without a local model
            return Decision(DENY, "offline_deny")
        return Decision(CLOUD, "redact_then_cloud" if redact else "cloud_allowed", chosen, redact)
    if local_ok:
        if block == "budget_exhausted" and policy.deny_when_exhausted and rule.prefer_cloud:
            return Decision(DENY, block)
        return Decision(LOCAL, block)
    return Decision(DENY, block)


def permitted(policy: CompiledPolicy, **inputs) -> tuple[bool, frozenset, bool]:
    """What the policy permits for these inputs, whatever it prefers: (local permitted, cloud models
    permitted, redaction required). Used by the property tests to compare scopes."""
    task = inputs["task"]
    rule = policy.rules.get(task) or policy.rules.get("*")
    if rule is None:
        return False, frozenset(), False
    local_ok = rule.local and inputs.get("local_available", True)
    if inputs.get("connectivity", ONLINE) == OFFLINE:
        return local_ok, frozenset(), False
    models = set()
    redact = False
    for candidate in rule.models:
        block, chosen, redact = _cloud_block(
            policy,
            rule,
            inputs["data_class"],
            inputs.get("tokens_in", 0),
            inputs.get("tokens_out", 0),
            inputs.get("connectivity", ONLINE),
            inputs.get("budget_left"),
            inputs.get("est_cost", 0.0),
            candidate,
            inputs.get("now", time.time()),
        )
        if block is None:
            models.add(chosen)
    return local_ok, frozenset(models), redact


def budget_left(document: dict, used: dict[str, dict]) -> BudgetLeft | None:
    """What is left of an effective policy's budgets, per field the tightest window, given what was used
    in each window (``{"day": {"tokens": .., "cost": .., "requests": ..}}``). None when there is no budget."""
    budgets = document.get("budgets") or {}
    if not budgets:
        return None
    left: dict[str, float | None] = {"tokens": None, "cost": None, "requests": None}
    for window, limits in budgets.items():
        spent = used.get(window, {})
        for field_name, limit in limits.items():
            remaining = max(limit - spent.get(field_name, 0), 0)
            if left[field_name] is None or remaining < left[field_name]:
                left[field_name] = remaining
    return BudgetLeft(tokens=left["tokens"], cost=left["cost"], requests=left["requests"])


def window_starts(at: dt.datetime) -> dict[str, dt.datetime]:
    """The start (UTC) of the budget windows an instant falls in; shared so both sides count alike."""
    at = at.astimezone(dt.UTC)
    return {
        "minute": at.replace(second=0, microsecond=0),
        "hour": at.replace(minute=0, second=0, microsecond=0),
        "day": at.replace(hour=0, minute=0, second=0, microsecond=0),
        "month": at.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
    }
