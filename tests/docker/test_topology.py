"""The compose stack's topology runs without containers too (scripts/topology.py), end to end."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_topology_runs_telemetry_a_rollout_and_the_console():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "topology.py"), "--check", "--devices", "4"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["topology"] == "ok"
    assert summary["devices_updated"] == 4
    assert summary["console_status"] == 200
    assert summary["ingest_counters"]["acknowledged_unwritten"] == 0
    assert summary["ingest_counters"]["counters"]["messages_stored"] > 0
