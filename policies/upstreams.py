"""The gateway's upstreams: OpenAI-compatible providers from ``LLM_UPSTREAMS`` (docs/configuration.md).

``LLM_UPSTREAMS`` is a JSON list, tried in order (the next one when one fails)::

    [{"name": "primary", "base_url": "https://api.example.com/v1", "api_key_env": "PRIMARY_KEY",
      "models": {"small": {"model": "provider-small-2025", "input_per_1k": 0.00015, "output_per_1k": 0.0006}}}]

``api_key_env`` names the variable holding the key (or ``api_key`` gives it inline; ``<VAR>_FILE`` works
too). Prices are per 1000 tokens in ``LLM_CURRENCY``. Only upstreams that list a model alias serve it.
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from fleet.env import env_str


@dataclass(frozen=True)
class ModelRoute:
    upstream_model: str
    input_per_1k: float
    output_per_1k: float


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    api_key: str
    models: dict[str, ModelRoute]
    timeout_s: float


def _price(entry: dict, field: str, where: str) -> float:
    value = entry.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ImproperlyConfigured(f"LLM_UPSTREAMS {where}.{field} must be a non-negative number")
    return float(value)


def parse_upstreams(raw: str) -> tuple[Upstream, ...]:
    try:
        entries = json.loads(raw or "[]")
    except ValueError as exc:
        raise ImproperlyConfigured(f"LLM_UPSTREAMS is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ImproperlyConfigured("LLM_UPSTREAMS must be a JSON list of upstreams")
    upstreams = []
    for index, entry in enumerate(entries):
        where = f"[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("base_url"), str):
            raise ImproperlyConfigured(f"LLM_UPSTREAMS {where} needs a base_url")
        key = entry.get("api_key")
        if key is None and entry.get("api_key_env"):
            key = env_str(entry["api_key_env"])
            if key is None:
                raise ImproperlyConfigured(f"LLM_UPSTREAMS {where}: {entry['api_key_env']} is not set")
        models = {}
        for alias, route in (entry.get("models") or {}).items():
            if isinstance(route, str):
                route = {"model": route}
            if not isinstance(route, dict) or not isinstance(route.get("model", alias), str):
                raise ImproperlyConfigured(f"LLM_UPSTREAMS {where}.models.{alias} must be an object")
            models[alias] = ModelRoute(
                upstream_model=route.get("model", alias),
                input_per_1k=_price(route, "input_per_1k", f"{where}.models.{alias}"),
                output_per_1k=_price(route, "output_per_1k", f"{where}.models.{alias}"),
            )
        upstreams.append(
            Upstream(
                name=str(entry.get("name") or f"upstream-{index}"),
                base_url=entry["base_url"].rstrip("/"),
                api_key=key or "",
                models=models,
                timeout_s=float(entry.get("timeout_s", 60)),
            )
        )
    return tuple(upstreams)


@lru_cache(maxsize=4)
def _parsed(raw: str) -> tuple[Upstream, ...]:
    return parse_upstreams(raw)


def configured_upstreams() -> tuple[Upstream, ...]:
    return _parsed(settings.LLM_UPSTREAMS)


def upstreams_for(alias: str) -> list[tuple[Upstream, ModelRoute]]:
    return [(u, u.models[alias]) for u in configured_upstreams() if alias in u.models]


def cost_micros(route: ModelRoute, tokens_in: int, tokens_out: int) -> int:
    """Cost in millionths of the currency, rounded up (a budget is never under-charged)."""
    return math.ceil((tokens_in * route.input_per_1k + tokens_out * route.output_per_1k) * 1000)


def price_table() -> dict[str, dict[str, float]]:
    """Per alias, the highest price of any upstream serving it: what devices estimate costs with."""
    table: dict[str, dict[str, float]] = {}
    for upstream in configured_upstreams():
        for alias, route in upstream.models.items():
            entry = table.setdefault(alias, {"input_per_1k": 0.0, "output_per_1k": 0.0})
            entry["input_per_1k"] = max(entry["input_per_1k"], route.input_per_1k)
            entry["output_per_1k"] = max(entry["output_per_1k"], route.output_per_1k)
    return table
