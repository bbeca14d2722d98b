"""Budgets under concurrency, against the real PostgreSQL: many requests of one device at once through
the gateway never spend more than the budget allows."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.db.models import Sum

from policies.models import BudgetCounter, LlmUsage
from tests.factories import make_device
from tests.policies.conftest import PRIVACY_FIRST, make_policy
from tests.policies.test_gateway import ask

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16
REQUESTS = 48


def hammer(token: str, count: int) -> list[int]:
    barrier = threading.Barrier(THREADS)

    def one(index: int) -> int:
        try:
            if index < THREADS:
                barrier.wait()
            return ask(token, content=f"question {index}").status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_requests_never_exceed_the_request_budget(gateway_upstreams, redis_server):
    make_policy("fleet", PRIVACY_FIRST | {"budgets": {"day": {"requests": 10}}})
    result, _ = make_device("cam-conc-1")
    codes = hammer(result.device_token, REQUESTS)
    assert codes.count(200) == 10
    assert codes.count(429) == REQUESTS - 10
    counter = BudgetCounter.objects.get(device=result.device, window="day")
    assert counter.requests == 10
    assert LlmUsage.objects.filter(device=result.device, state="settled").count() == 10
    assert LlmUsage.objects.filter(device=result.device, reason="budget_exhausted").count() == REQUESTS - 10


def test_concurrent_requests_never_exceed_the_token_and_cost_budget(gateway_upstreams, redis_server):
    # Each request reserves its upper bound (about 245 tokens, 890 micro-units) and settles about 11 tokens:
    # with 300 tokens only one reservation fits at a time, and after a handful of settled requests none
    # does, however the 48 requests interleave.
    make_policy("fleet", PRIVACY_FIRST | {"budgets": {"day": {"tokens": 300, "cost": 0.002}}})
    result, _ = make_device("cam-conc-2")
    codes = hammer(result.device_token, REQUESTS)
    assert set(codes) <= {200, 429}
    assert 1 <= codes.count(200) <= 300 // 11
    counter = BudgetCounter.objects.get(device=result.device, window="day")
    settled = LlmUsage.objects.filter(device=result.device, state="settled").aggregate(
        tokens=Sum("tokens_in") + Sum("tokens_out"), cost=Sum("cost_micros")
    )
    assert counter.tokens == settled["tokens"] <= 300
    assert counter.cost_micros == settled["cost"] <= 2000
    assert counter.requests == codes.count(200)
    assert not LlmUsage.objects.filter(device=result.device, state="reserved").exists()  # nothing left dangling
