"""The on-disk queue: sequence numbers, batching, acknowledgement and the disk cap."""

import json
import subprocess
import sys
import time

from fleet_agent.outbox import MAX_BATCH_RECORDS, MAX_PAYLOAD_BYTES, SEQ_BLOCK, Outbox


def record(i: int, size: int = 0) -> dict:
    return {"ts": int(time.time() * 1000), "task": "detect", "latency_ms": float(i), "label": "x" * size}


def test_seq_is_monotonic_across_message_kinds(tmp_path):
    outbox = Outbox(tmp_path / "q.db")
    first = outbox.enqueue("heartbeat", {"dropped": 0})
    second = outbox.next_seq()
    outbox.add_records([record(1)])
    outbox.seal_batches(force=True)
    third = outbox.pending(limit=10)[-1].seq
    assert first < second < third


def test_seq_survives_restart_and_skips_the_rest_of_the_reserved_block(tmp_path):
    outbox = Outbox(tmp_path / "q.db")
    used = [outbox.next_seq() for _ in range(5)]
    outbox.close()
    reopened = Outbox(tmp_path / "q.db")
    assert reopened.next_seq() > max(used)
    assert reopened.next_seq() > SEQ_BLOCK  # the unused rest of the first block is never handed out


def test_seq_is_never_reused_after_kill_9(tmp_path):
    script = (
        "import sys\nfrom pathlib import Path\nfrom fleet_agent.outbox import Outbox\n"
        "o = Outbox(Path(sys.argv[1]))\n"
        "while True:\n    print(o.next_seq(), flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "q.db")], stdout=subprocess.PIPE)
    seen = [int(process.stdout.readline()) for _ in range(2500)]  # crosses two block boundaries
    process.kill()
    process.wait()
    reopened = Outbox(tmp_path / "q.db")
    assert reopened.next_seq() > max(seen)


def test_records_are_sealed_into_batches_of_at_most_500(tmp_path):
    outbox = Outbox(tmp_path / "q.db")
    outbox.add_records([record(i) for i in range(1200)])
    assert outbox.seal_batches(max_age_s=3600) == 2  # two full batches; 200 wait for more or for age
    assert outbox.depth() == 1200
    outbox.seal_batches(force=True)
    batches = [json.loads(m.payload) for m in outbox.pending(limit=10)]
    assert [len(b["records"]) for b in batches] == [MAX_BATCH_RECORDS, MAX_BATCH_RECORDS, 200]
    assert [b["records"][0]["latency_ms"] for b in batches] == [0.0, 500.0, 1000.0]
    assert all(set(b) == {"v", "seq", "ts", "records"} and b["v"] == 1 for b in batches)


def test_large_records_are_split_to_fit_the_payload_limit(tmp_path):
    outbox = Outbox(tmp_path / "q.db")
    outbox.add_records([record(i, size=2000) for i in range(500)])
    outbox.seal_batches(force=True)
    messages = outbox.pending(limit=10)
    assert len(messages) > 1
    assert all(len(m.payload) <= MAX_PAYLOAD_BYTES for m in messages)
    assert sum(len(json.loads(m.payload)["records"]) for m in messages) == 500


def test_a_message_leaves_the_queue_only_when_acknowledged(tmp_path):
    outbox = Outbox(tmp_path / "q.db")
    seq = outbox.enqueue("ota/status", {"state": "downloading"})
    assert [m.seq for m in outbox.pending(limit=10)] == [seq]
    outbox.close()
    reopened = Outbox(tmp_path / "q.db")
    assert [m.seq for m in reopened.pending(limit=10)] == [seq]  # still there after a restart
    reopened.ack(seq)
    assert reopened.pending(limit=10) == []
    reopened.ack(seq)  # a duplicate PUBACK is harmless


def test_disk_cap_drops_the_oldest_records_and_reports_the_count_once(tmp_path):
    outbox = Outbox(tmp_path / "q.db", cap_bytes=200_000)
    outbox.add_records([record(i, size=100) for i in range(1000)])  # ~ 180 bytes each: 180 KB, under the cap
    outbox.seal_batches(force=True)
    assert outbox.dropped() == 0
    outbox.add_records([record(1000 + i, size=100) for i in range(1000)])
    dropped = outbox.dropped()
    assert dropped > 0
    assert outbox.queued_bytes <= 200_000
    remaining = outbox.depth()
    assert remaining == 2000 - dropped
    # The oldest went first: the newest record is still queued, the very first is not.
    outbox.seal_batches(force=True)
    latencies = [
        r["latency_ms"]
        for m in outbox.pending(limit=100)
        if m.leaf == "telemetry"
        for r in json.loads(m.payload)["records"]
    ]
    assert 1999.0 in latencies and 0.0 not in latencies
    assert latencies == sorted(latencies)

    outbox.enqueue_heartbeat(lambda dropped, buffer_depth: {"dropped": dropped, "buffer_depth": buffer_depth})
    outbox.enqueue_heartbeat(lambda dropped, buffer_depth: {"dropped": dropped, "buffer_depth": buffer_depth})
    beats = [json.loads(m.payload) for m in outbox.pending(limit=100) if m.leaf == "heartbeat"]
    assert [b["dropped"] for b in beats] == [dropped, 0]
    assert beats[0]["buffer_depth"] == remaining


def test_heartbeats_and_update_reports_are_never_dropped_by_the_cap(tmp_path):
    outbox = Outbox(tmp_path / "q.db", cap_bytes=50_000)
    seq = outbox.enqueue("ota/status", {"state": "failed", "reason": "hash_mismatch"})
    outbox.add_records([record(i, size=200) for i in range(1000)])
    assert outbox.dropped() > 0
    assert seq in [m.seq for m in outbox.pending(limit=1000) if m.leaf == "ota/status"]
