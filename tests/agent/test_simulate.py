"""The fleet simulator: virtual devices enrolled through the real API, each a real agent, producing
telemetry shaped by the model version it runs, and applying updates through the agent's own code path."""

import threading

from fleet_agent.simulate import Simulator
from tests.agent.conftest import bodies
from tests.agent.fakes import LocalSource, make_artifact, update_for
from tests.factories import make_token

PROFILES = {
    "default": {"latency_ms": [20, 2], "error_rate": 0.0, "confidence": [0.9, 0.02]},
    "2.0.0": {"latency_ms": [200, 10], "error_rate": 0.9, "confidence": [0.4, 0.05]},  # a bad release
}


def test_simulated_fleet_reports_and_a_bad_release_is_rolled_back_by_probation(platform_url, observer, tmp_path):
    artifact = make_artifact(tmp_path / "repo", selftest=None)
    simulator = Simulator(
        server=platform_url,
        token=make_token(max_uses=10),
        devices=3,
        base_dir=tmp_path / "sim",
        prefix="simt",
        records_per_s=40,
        profiles=PROFILES,
        workers=2,
        settings={"heartbeat_interval_s": 1.0, "probation_min_records": 20, "reconnect_min_s": 0.2},
        # Device 0 gets the bad release; the others have nothing assigned.
        source_factory=lambda agent: LocalSource(
            update_for(artifact, hardware=("sim-cpu",)) if agent.device_id == "simt-0000" else None, artifact
        ),
        seed=7,
    )
    stop = threading.Event()
    thread = threading.Thread(target=simulator.run, args=(stop,))
    simulator.start()
    thread.start()
    try:
        seen = observer.wait_for(
            lambda m: (
                all(bodies(m, "heartbeat", f"simt-000{i}") for i in range(3))
                and any(b["state"] == "rolled_back" for b in bodies(m, "ota/status", "simt-0000"))
                and len(bodies(m, "telemetry", "simt-0001")) >= 2
                and any(
                    r["model_version"] == "1.0.0" for b in bodies(m, "telemetry", "simt-0000") for r in b["records"]
                )
            ),
            timeout=60,
        )
        assert simulator.connected() == 3
    finally:
        stop.set()
        thread.join(30)
    rollback = next(b for b in bodies(seen, "ota/status", "simt-0000") if b["state"] == "rolled_back")
    assert rollback["reason"] == "probation_errors"
    records = [r for b in bodies(seen, "telemetry", "simt-0000") for r in b["records"]]
    bad = [r for r in records if r["model_version"] == "2.0.0"]
    good = [r for r in records if r["model_version"] == "1.0.0"]
    assert bad and good
    assert sum(r["latency_ms"] for r in bad) / len(bad) > 5 * sum(r["latency_ms"] for r in good) / len(good)
    assert sum(r["error"] is not None for r in bad) / len(bad) > 0.5
    assert all(r["error"] is None for r in good)
    assert simulator.devices[0].agent.active_model()["version"] == "1.0.0"
