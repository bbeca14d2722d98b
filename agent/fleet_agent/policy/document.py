"""The policy document: what one scope (fleet, group or device) says. Every field is optional.

A scope's document only constrains what it mentions; ``merge`` combines the scopes. Validation returns
every problem at once, each with the dotted path of the field (``tasks.chat.routes.1``) and a code, so
the API can answer a 400 that names the fields.
"""

import datetime as dt
import math
import re
from dataclasses import dataclass

DOCUMENT_VERSION = 1

ROUTES = ("local", "cloud")
# Egress of a data class, from the strictest to the loosest.
EGRESS_ORDER = ("never", "redact_then_cloud", "allow")
WINDOWS = ("hour", "day", "month")
BUDGET_FIELDS = ("tokens", "cost", "requests")
# What to do when a budget is spent, strictest first.
EXHAUSTED_ORDER = ("deny", "local")
# What to do offline when the cloud would have been used, strictest first: ``queue`` answers deny now and
# the application asks again once online (decide() runs again then, so queueing never bypasses a rule).
OFFLINE_ORDER = ("deny", "queue", "local")
PREFERENCES = ("local", "cloud")

TASK_FIELDS = {
    "routes",
    "models",
    "max_input_tokens",
    "max_output_tokens",
    "latency_budget_ms",
    "prefer",
    "allow_metered",
}
TOP_FIELDS = {
    "v",
    "tasks",
    "data_classes",
    "budgets",
    "on_budget_exhausted",
    "budget_soft_threshold",
    "rate_limit",
    "offline",
    "locks",
    "expires_at",
    "offline_grace_s",
}

NAME_RE = re.compile(r"^(\*|[a-z][a-z0-9_.-]{0,63})$")  # task types, data classes
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")  # model aliases
LOCK_RE = re.compile(r"^[a-z_*][a-z0-9_.*-]{0,200}$")
MAX_INT = 10**12


@dataclass(frozen=True)
class PolicyError:
    path: str
    code: str
    message: str


class _Checker:
    def __init__(self):
        self.errors: list[PolicyError] = []

    def fail(self, path: str, code: str, message: str) -> None:
        self.errors.append(PolicyError(path, code, message))

    def object(self, value, path: str, allowed: set[str] | None = None) -> bool:
        if not isinstance(value, dict):
            self.fail(path, "type", "Must be an object.")
            return False
        for key in value:
            if not isinstance(key, str) or (allowed is not None and key not in allowed):
                self.fail(f"{path}.{key}".lstrip("."), "unknown_field", f"Unknown field {key!r}.")
        return True

    def integer(self, value, path: str, minimum: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, "type", "Must be an integer.")
        elif not minimum <= value <= MAX_INT:
            self.fail(path, "range", f"Must be between {minimum} and {MAX_INT}.")

    def number(self, value, path: str, minimum: float = 0.0, maximum: float = float(MAX_INT)) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(path, "type", "Must be a number.")
        elif not minimum <= value <= maximum:
            self.fail(path, "range", f"Must be between {minimum:g} and {maximum:g}.")

    def choice(self, value, path: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            self.fail(path, "choice", f"Must be one of {', '.join(choices)}.")

    def name_list(self, value, path: str, pattern: re.Pattern, choices: tuple[str, ...] | None = None) -> None:
        if not isinstance(value, list):
            self.fail(path, "type", "Must be a list.")
            return
        if len(value) > 100:
            self.fail(path, "too_long", "At most 100 entries.")
        seen = set()
        for index, item in enumerate(value):
            item_path = f"{path}.{index}"
            if not isinstance(item, str) or not pattern.match(item):
                self.fail(item_path, "invalid", "Not a valid name.")
            elif choices is not None and item not in choices:
                self.fail(item_path, "choice", f"Must be one of {', '.join(choices)}.")
            elif item in seen:
                self.fail(item_path, "duplicate", f"{item!r} is listed twice.")
            seen.add(item)


def parse_time(value: str) -> dt.datetime | None:
    """An ISO 8601 time with a UTC offset, or None if it is not one."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None


def validate_document(document) -> list[PolicyError]:
    """Every problem of a scope's policy document (an empty list means valid)."""
    check = _Checker()
    if not check.object(document, "", TOP_FIELDS):
        return check.errors
    if document.get("v", DOCUMENT_VERSION) != DOCUMENT_VERSION:
        check.fail("v", "version", f"Only version {DOCUMENT_VERSION} is known.")

    tasks = document.get("tasks")
    if tasks is not None and check.object(tasks, "tasks"):
        if len(tasks) > 200:
            check.fail("tasks", "too_long", "At most 200 task types.")
        for name, rule in tasks.items():
            path = f"tasks.{name}"
            if not NAME_RE.match(name):
                check.fail(path, "invalid_name", "Task types are lowercase names (a-z, 0-9, _ . -) or '*'.")
            if not check.object(rule, path, TASK_FIELDS):
                continue
            if "routes" in rule:
                check.name_list(rule["routes"], f"{path}.routes", NAME_RE, ROUTES)
            if "models" in rule:
                check.name_list(rule["models"], f"{path}.models", MODEL_RE)
            for field in ("max_input_tokens", "max_output_tokens", "latency_budget_ms"):
                if field in rule:
                    check.integer(rule[field], f"{path}.{field}")
            if "prefer" in rule:
                check.choice(rule["prefer"], f"{path}.prefer", PREFERENCES)
            if "allow_metered" in rule and not isinstance(rule["allow_metered"], bool):
                check.fail(f"{path}.allow_metered", "type", "Must be true or false.")

    classes = document.get("data_classes")
    if classes is not None and check.object(classes, "data_classes"):
        for name, egress in classes.items():
            if not NAME_RE.match(name) or name == "*":
                check.fail(f"data_classes.{name}", "invalid_name", "Data classes are lowercase names.")
            check.choice(egress, f"data_classes.{name}", EGRESS_ORDER)

    budgets = document.get("budgets")
    if budgets is not None and check.object(budgets, "budgets", set(WINDOWS)):
        for window, limits in budgets.items():
            if window in WINDOWS and check.object(limits, f"budgets.{window}", set(BUDGET_FIELDS)):
                for field, value in limits.items():
                    if field == "cost":
                        check.number(value, f"budgets.{window}.cost")
                    elif field in BUDGET_FIELDS:
                        check.integer(value, f"budgets.{window}.{field}")

    if "on_budget_exhausted" in document:
        check.choice(document["on_budget_exhausted"], "on_budget_exhausted", EXHAUSTED_ORDER)
    if "budget_soft_threshold" in document:
        check.number(document["budget_soft_threshold"], "budget_soft_threshold", 0.0, 1.0)

    rate = document.get("rate_limit")
    if rate is not None and check.object(rate, "rate_limit", {"requests_per_minute"}) and "requests_per_minute" in rate:
        check.integer(rate["requests_per_minute"], "rate_limit.requests_per_minute")

    offline = document.get("offline")
    if offline is not None and check.object(offline, "offline", {"mode", "queue_max_age_s"}):
        if "mode" in offline:
            check.choice(offline["mode"], "offline.mode", OFFLINE_ORDER)
        if "queue_max_age_s" in offline:
            check.integer(offline["queue_max_age_s"], "offline.queue_max_age_s")

    if "locks" in document:
        check.name_list(document["locks"], "locks", LOCK_RE)
    if "expires_at" in document and (
        not isinstance(document["expires_at"], str) or parse_time(document["expires_at"]) is None
    ):
        check.fail("expires_at", "invalid", "Must be an ISO 8601 time with a UTC offset.")
    if "offline_grace_s" in document:
        check.integer(document["offline_grace_s"], "offline_grace_s")
    return check.errors
