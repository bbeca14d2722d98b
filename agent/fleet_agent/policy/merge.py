"""Inheritance: fleet default -> group -> device, merged into one effective policy.

Rules (docs/policies.md has the prose):
- Restrictive fields take the most restrictive value of every scope that sets them: allowlists are
  intersected (task types, routes, models), egress takes the strictest class rule, limits the smallest,
  ``allow_metered`` is an AND, the budget and offline actions the strictest.
- Preferences (``prefer``, ``latency_budget_ms``, the order of ``models``, ``budget_soft_threshold``) come
  from the nearest scope that sets them, unless a scope above locked the field: then from the nearest
  scope at or above the lock.
- A scope that has ``tasks`` allows only the task types it lists (``*`` matches any); so a lower scope
  can drop a task type but never add one its parents do not allow. The top scope always has an
  allowlist (empty when it sets no ``tasks``): no rule at the top means every task is denied.

Every field of the result carries the label of the scope it came from (``default`` when no scope set it).
"""

from dataclasses import dataclass, field

from fleet_agent.policy.document import (
    DOCUMENT_VERSION,
    EGRESS_ORDER,
    EXHAUSTED_ORDER,
    OFFLINE_ORDER,
    WINDOWS,
    parse_time,
)

DEFAULT = "default"

TASK_DEFAULTS = {
    "routes": ["local"],
    "models": [],
    "max_input_tokens": None,
    "max_output_tokens": None,
    "latency_budget_ms": None,
    "prefer": "local",
    "allow_metered": True,
}


@dataclass
class EffectivePolicy:
    document: dict
    sources: dict[str, str] = field(default_factory=dict)


def _lock_matches(lock: str, path: str) -> bool:
    """A lock covers its path and everything below it; ``*`` in a lock matches any one segment."""
    lock_parts = lock.split(".")
    path_parts = path.split(".")
    if len(lock_parts) > len(path_parts):
        return False
    return all(lp in ("*", pp) for lp, pp in zip(lock_parts, path_parts, strict=False))


class _Merger:
    def __init__(self, scopes: list[tuple[str, dict]]):
        self.scopes = scopes
        self.sources: dict[str, str] = {}

    def _locked_from(self, path: str) -> int:
        """Index of the highest scope that locks ``path`` (values below it are ignored for preferences)."""
        for index, (_, doc) in enumerate(self.scopes):
            if any(_lock_matches(lock, path) for lock in doc.get("locks", ())):
                return index
        return len(self.scopes) - 1

    def strictest(self, path: str, values: list[tuple[int, object]], order: tuple, default):
        """The value earliest in ``order`` (strictest); ties go to the highest scope."""
        best = None
        for index, value in values:
            if best is None or order.index(value) < order.index(best[1]):
                best = (index, value)
        return self._take(path, best, default)

    def smallest(self, path: str, values: list[tuple[int, object]], default=None):
        best = None
        for index, value in values:
            if best is None or value < best[1]:
                best = (index, value)
        return self._take(path, best, default)

    def nearest(self, path: str, values: list[tuple[int, object]], default):
        limit = self._locked_from(path)
        best = None
        for index, value in values:
            if index <= limit:
                best = (index, value)
        return self._take(path, best, default)

    def _take(self, path: str, best, default):
        if best is None:
            self.sources[path] = DEFAULT
            return default
        self.sources[path] = self.scopes[best[0]][0]
        return best[1]


def _set_values(scopes, getter) -> list[tuple[int, object]]:
    out = []
    for index, (_, doc) in enumerate(scopes):
        value = getter(doc)
        if value is not None:
            out.append((index, value))
    return out


def _narrowing(m: _Merger, path: str, sets: list[tuple[int, list]]) -> set:
    """Intersect allowlists; the source is the scope that narrowed the set last (else the highest)."""
    allowed: set | None = None
    source = sets[0][0]
    for index, value in sets:
        narrowed = set(value) if allowed is None else allowed & set(value)
        if allowed is not None and narrowed != allowed:
            source = index
        allowed = narrowed
    m.sources[path] = m.scopes[source][0]
    return allowed


def _merge_task(m: _Merger, path: str, rules: list[tuple[int, dict]]) -> dict:
    def values(name):
        return [(i, rule[name]) for i, rule in rules if name in rule]

    routes_sets = values("routes")
    routes = list(TASK_DEFAULTS["routes"])
    if routes_sets:
        allowed = _narrowing(m, f"{path}.routes", routes_sets)
        routes = [r for r in ("local", "cloud") if r in allowed]
    else:
        m.sources[f"{path}.routes"] = DEFAULT

    model_lists = values("models")
    models: list[str] = []
    if model_lists:
        allowed_models = _narrowing(m, f"{path}.models", model_lists)
        # Order (the preference among allowed models) from the nearest unlocked scope.
        ordered = m.nearest(f"{path}.models.order", model_lists, [])
        models = [name for name in ordered if name in allowed_models]
    else:
        m.sources[f"{path}.models"] = DEFAULT

    return {
        "routes": routes,
        "models": models,
        "max_input_tokens": m.smallest(f"{path}.max_input_tokens", values("max_input_tokens")),
        "max_output_tokens": m.smallest(f"{path}.max_output_tokens", values("max_output_tokens")),
        "latency_budget_ms": m.nearest(f"{path}.latency_budget_ms", values("latency_budget_ms"), None),
        "prefer": m.nearest(f"{path}.prefer", values("prefer"), TASK_DEFAULTS["prefer"]),
        "allow_metered": m.strictest(f"{path}.allow_metered", values("allow_metered"), (False, True), True),
    }


def merge_policies(scopes: list[tuple[str, dict]]) -> EffectivePolicy:
    """Merge scope documents given from the top (fleet) to the bottom (device), each as (label, document)."""
    m = _Merger(scopes)
    out: dict = {"v": DOCUMENT_VERSION}

    # Task types: each scope that has ``tasks`` is an allowlist (its names plus ``*``).
    # The top scope (the fleet default) always counts, even without ``tasks``: with no rule at the top,
    # nothing is allowed, so a lower scope can never switch on a task type nobody above allowed.
    task_scopes = [(i, doc.get("tasks", {})) for i, (_, doc) in enumerate(scopes) if i == 0 or "tasks" in doc]
    names = sorted({name for _, tasks in task_scopes for name in tasks})
    tasks_out = {}
    for name in names:
        rules = []
        for index, tasks in task_scopes:
            rule = tasks.get(name, tasks.get("*") if name != "*" else None)
            if rule is None:
                m.sources[f"tasks.{name}"] = scopes[index][0]  # this scope does not allow the task type
                rules = None
                break
            rules.append((index, rule))
        if rules:
            tasks_out[name] = _merge_task(m, f"tasks.{name}", rules)
    out["tasks"] = tasks_out

    class_names = sorted({name for _, doc in scopes for name in doc.get("data_classes", {})})
    out["data_classes"] = {
        name: m.strictest(
            f"data_classes.{name}",
            _set_values(scopes, lambda d, n=name: d.get("data_classes", {}).get(n)),
            EGRESS_ORDER,
            "never",
        )
        for name in class_names
    }

    budgets = {}
    for window in WINDOWS:
        limits = {}
        for field_name in ("tokens", "cost", "requests"):
            value = m.smallest(
                f"budgets.{window}.{field_name}",
                _set_values(scopes, lambda d, w=window, f=field_name: d.get("budgets", {}).get(w, {}).get(f)),
            )
            if value is not None:
                limits[field_name] = value
            else:
                del m.sources[f"budgets.{window}.{field_name}"]
        if limits:
            budgets[window] = limits
    out["budgets"] = budgets
    out["on_budget_exhausted"] = m.strictest(
        "on_budget_exhausted", _set_values(scopes, lambda d: d.get("on_budget_exhausted")), EXHAUSTED_ORDER, "local"
    )
    out["budget_soft_threshold"] = m.nearest(
        "budget_soft_threshold", _set_values(scopes, lambda d: d.get("budget_soft_threshold")), 0.8
    )
    out["rate_limit"] = {
        "requests_per_minute": m.smallest(
            "rate_limit.requests_per_minute",
            _set_values(scopes, lambda d: d.get("rate_limit", {}).get("requests_per_minute")),
        )
    }
    out["offline"] = {
        "mode": m.strictest(
            "offline.mode", _set_values(scopes, lambda d: d.get("offline", {}).get("mode")), OFFLINE_ORDER, "local"
        ),
        "queue_max_age_s": m.smallest(
            "offline.queue_max_age_s",
            _set_values(scopes, lambda d: d.get("offline", {}).get("queue_max_age_s")),
            3600,
        ),
    }
    expiries = [(i, parse_time(v)) for i, v in _set_values(scopes, lambda d: d.get("expires_at"))]
    earliest = m.smallest("expires_at", [(i, v) for i, v in expiries if v is not None])
    out["expires_at"] = earliest.isoformat() if earliest else None
    out["offline_grace_s"] = m.smallest("offline_grace_s", _set_values(scopes, lambda d: d.get("offline_grace_s")), 0)
    out["locks"] = sorted({lock for _, doc in scopes for lock in doc.get("locks", ())})
    return EffectivePolicy(document=out, sources=m.sources)
