"""LLM_UPSTREAMS parsing: keys from the environment, prices, and start-up errors for bad values."""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured

from policies.upstreams import cost_micros, parse_upstreams


def test_keys_come_from_the_named_variable_and_prices_are_per_1k(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-from-env")
    [upstream] = parse_upstreams(
        json.dumps(
            [
                {
                    "base_url": "https://llm.example.com/v1/",
                    "api_key_env": "TEST_LLM_KEY",
                    "models": {"small": {"model": "s-1", "input_per_1k": 0.5, "output_per_1k": 1.5}, "plain": "p-1"},
                }
            ]
        )
    )
    assert (upstream.name, upstream.base_url, upstream.api_key) == (
        "upstream-0",
        "https://llm.example.com/v1",
        "sk-from-env",
    )
    assert upstream.models["plain"].upstream_model == "p-1"
    # 1000 input tokens at 0.5 + 2000 output tokens at 1.5 = 3.5 currency units = 3.5e6 micros.
    assert cost_micros(upstream.models["small"], 1000, 2000) == 3_500_000
    assert cost_micros(upstream.models["small"], 1, 0) == 500  # rounded up, never down


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ('{"base_url": "x"}', "JSON list"),
        ('[{"name": "a"}]', "base_url"),
        ('[{"base_url": "x", "api_key_env": "SURELY_UNSET_LLM_KEY"}]', "is not set"),
        ('[{"base_url": "x", "models": {"m": {"input_per_1k": -1}}}]', "non-negative"),
    ],
)
def test_bad_values_stop_the_start_with_the_reason(raw, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_upstreams(raw)
