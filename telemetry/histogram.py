"""Latency histograms with log-spaced buckets, mergeable across devices and minutes.

Why histograms: a rollout gate compares the p95 latency of a cohort of devices over a window. Per-row
p95 values cannot be combined into a cohort p95, but bucket counts can be summed exactly. Buckets grow
by 5% per step (from 0.1 ms to ~10 minutes), so a quantile read from merged buckets is within 2.5% of
the true value: fine enough to see a 10% latency regression.
"""

import math

GROWTH = 1.05
MIN_MS = 0.1
MAX_BUCKET = 320  # 0.1 ms * 1.05**320 is about 6,000 s; anything slower lands in the last bucket
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= MIN_MS:
        return 0
    return min(MAX_BUCKET, int(math.log(latency_ms / MIN_MS) / _LOG_GROWTH) + 1)


def bucket_upper_ms(index: int) -> float:
    return MIN_MS * GROWTH**index


def bucket_mid_ms(index: int) -> float:
    if index == 0:
        return MIN_MS
    return (bucket_upper_ms(index - 1) + bucket_upper_ms(index)) / 2


def add(hist: dict[str, int], latency_ms: float, count: int = 1) -> None:
    """Add one observation (JSON object keys are strings, so the buckets are keyed by str(index))."""
    key = str(bucket_of(latency_ms))
    hist[key] = hist.get(key, 0) + count


def merge(into: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    for key, count in other.items():
        into[key] = into.get(key, 0) + count
    return into


def quantile(hist: dict[str, int], q: float) -> float | None:
    """The q-quantile (0..1) of the observations in hist, or None when it is empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(int(k) for k in hist):
        seen += hist[str(index)]
        if seen >= rank:
            return bucket_mid_ms(index)
    return bucket_mid_ms(max(int(k) for k in hist))
