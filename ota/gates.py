"""Gate evaluation: a pure function from cohort and control metrics to pass / fail / wait per gate.

Each gate has a threshold and a minimum sample size. Not enough data is ``wait``, never ``pass``. The
comparisons (docs/updates.md, "Gates"):

| gate | value | samples |
| --- | --- | --- |
| install_failure_rate | failed / finished installs in the cohort | finished installs |
| offline_rate | cohort offline share - control offline share | devices (each side) |
| error_rate | cohort error rate - control error rate | inferences (each side) |
| p95_latency_regression | cohort p95 / control p95 - 1 | inferences (each side) |
| confidence_shift | abs(cohort mean confidence - control mean confidence) | confidence samples (each side) |
| cloud_escalation_rate | cohort cloud share - control cloud share | inferences (each side) |

A gate fails when its value is above its threshold.
"""

from dataclasses import asdict, dataclass

GATE_NAMES = (
    "install_failure_rate",
    "offline_rate",
    "error_rate",
    "p95_latency_regression",
    "confidence_shift",
    "cloud_escalation_rate",
)

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True)
class Metrics:
    devices: int = 0
    offline: int = 0
    finished: int = 0  # installs that reached succeeded or a failed state
    failed: int = 0
    inferences: int = 0
    errors: int = 0
    cloud: int = 0
    confidence_sum: float = 0.0
    confidence_count: int = 0
    p95_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Metrics":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass(frozen=True)
class GateResult:
    name: str
    status: str
    value: float | None
    threshold: float
    samples: int
    min_samples: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _value_and_samples(name: str, cohort: Metrics, control: Metrics) -> tuple[float | None, int]:
    """The gate's value and the smaller sample count of the sides it compares (None: not computable)."""
    if name == "install_failure_rate":
        return (_rate(cohort.failed, cohort.finished) if cohort.finished else None), cohort.finished
    if name == "offline_rate":
        samples = min(cohort.devices, control.devices)
        return _rate(cohort.offline, cohort.devices) - _rate(control.offline, control.devices), samples
    samples = min(cohort.inferences, control.inferences)
    if name == "error_rate":
        return _rate(cohort.errors, cohort.inferences) - _rate(control.errors, control.inferences), samples
    if name == "cloud_escalation_rate":
        return _rate(cohort.cloud, cohort.inferences) - _rate(control.cloud, control.inferences), samples
    if name == "p95_latency_regression":
        if not cohort.p95_ms or not control.p95_ms:
            return None, samples
        return cohort.p95_ms / control.p95_ms - 1.0, samples
    if name == "confidence_shift":
        samples = min(cohort.confidence_count, control.confidence_count)
        if not samples:
            return None, 0
        return abs(
            _rate(cohort.confidence_sum, cohort.confidence_count)
            - _rate(control.confidence_sum, control.confidence_count)
        ), samples
    raise ValueError(f"unknown gate {name!r}")


def evaluate_gates(gates: dict[str, dict], *, cohort: Metrics, control: Metrics) -> list[GateResult]:
    results = []
    for name in sorted(gates):
        config = gates[name]
        threshold = float(config["threshold"])
        min_samples = int(config.get("min_samples", 1))
        value, samples = _value_and_samples(name, cohort, control)
        if value is None or samples < max(min_samples, 1):
            status = WAIT  # not enough data is never a pass
        elif value > threshold:
            status = FAIL
        else:
            status = PASS
        results.append(
            GateResult(
                name=name, status=status, value=value, threshold=threshold, samples=samples, min_samples=min_samples
            )
        )
    return results


def overall(results: list[GateResult]) -> str:
    """fail if any gate failed, wait if any waits, else pass (no gates at all: pass)."""
    statuses = {result.status for result in results}
    if FAIL in statuses:
        return FAIL
    if WAIT in statuses:
        return WAIT
    return PASS
