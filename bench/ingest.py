"""Ingest benchmark: simulated devices publish over mTLS MQTT (QoS 1), ingest workers store with ack after commit.

    .venv/bin/python bench/ingest.py --mode single --devices 20 --messages 60000 --workers 1
    .venv/bin/python bench/ingest.py --mode batch  --devices 20 --messages 4000  --workers 2
    .venv/bin/python bench/ingest.py --mode single --rate 2000 --duration 20     # latency at a fixed rate

Starts its own PostgreSQL (with track_commit_timestamp, so each row's commit time is known) and Mosquitto
(the same config as tests and production, through fleet.broker.broker_setup), enrolls the devices for
real, runs the publishers in separate processes (one MQTT connection per device) and `manage.py ingest`
workers, then checks what was stored. Latency is publish-to-commit: every record's ts is the publish
time, and PostgreSQL's commit timestamp of its row is the commit time (same clock).

Prints its figures and ends with one JSON line.
"""

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def publisher(devices, *, ca_file, host, port, messages, records, rate, start_at, results):
    """One process publishing for several devices; reports how many publishes the broker acknowledged."""
    import ssl
    import threading

    import paho.mqtt.client as mqtt

    from fleet_agent import schemas

    clients = []
    acked = [0]
    lock = threading.Lock()

    def on_publish(client, userdata, mid, reason, properties):
        with lock:
            acked[0] += 1

    for device_id, cert, key in devices:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311
        )
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(cert, key)
        client.tls_set_context(context)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.connect(host, port, keepalive=60)
        client.loop_start()
        clients.append((device_id, client))
    while not all(c.is_connected() for _d, c in clients):
        time.sleep(0.05)
    while time.time() < start_at:
        time.sleep(0.001)
    sent = 0
    per_tick = None if not rate else max(1, int(rate / 100))  # pace in 10 ms ticks
    tick_started = time.monotonic()
    for seq in range(1, messages + 1):
        for device_id, client in clients:
            now = schemas.now_ms()
            recs = [
                schemas.inference_record(
                    task="detect", model="yolo-n", model_version="1.0.0", latency_ms=12.0, confidence=0.9, ts_ms=now
                )
                for _ in range(records)
            ]
            payload = schemas.encode(schemas.telemetry_message(seq=seq, records=recs, ts_ms=now))
            client.publish(f"devices/{device_id}/telemetry", payload, qos=1)
            sent += 1
            if per_tick and sent % per_tick == 0:
                tick_started += 0.01
                delay = tick_started - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    deadline = time.monotonic() + 600
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    results.put({"sent": sent, "acked": acked[0], "finished": time.time()})
    for _d, client in clients:
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["single", "batch"], default="single")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--messages", type=int, default=40000, help="total messages (ignored with --rate)")
    parser.add_argument("--rate", type=float, default=0, help="total messages/s (0: as fast as possible)")
    parser.add_argument("--duration", type=float, default=20, help="seconds, with --rate")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--batch-ms", type=int, default=200)
    parser.add_argument("--batch-messages", type=int, default=1000)
    args = parser.parse_args()
    records = 1 if args.mode == "single" else 50

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
    # Importing the test services plugin points the settings at fresh loopback ports and a temp folder.
    from tests import services as svc

    pg = start_postgres(svc)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from fleet.broker import broker_setup
    from tests.factories import make_device

    call_command("migrate", verbosity=0)
    config = broker_setup(
        state_dir=svc.BROKER_DIR,
        server_names=["localhost", "127.0.0.1"],
        device_port=svc.MQTT_DEVICE_PORT,
        platform_port=svc.MQTT_PLATFORM_PORT,
        bind_address="127.0.0.1",
    )
    broker = svc.MosquittoBroker(
        config=config, device_port=svc.MQTT_DEVICE_PORT, platform_port=svc.MQTT_PLATFORM_PORT, ca_row={}
    )
    broker.start()
    workers = []
    try:
        from fleet_agent.identity import private_key_pem

        device_files = []
        keys_dir = svc.RUN_DIR / "bench-devices"
        keys_dir.mkdir()
        for i in range(args.devices):
            result, key = make_device(f"bench-{i:05d}")
            cert, keyf = keys_dir / f"{i}.crt", keys_dir / f"{i}.key"
            cert.write_text(result.certificate_pem)
            keyf.write_bytes(private_key_pem(key))
            device_files.append((result.device.id, str(cert), str(keyf)))
        connection.close()

        env = os.environ | {"FLEET_LOG_LEVEL": "WARNING"}
        for k in range(args.workers):
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "manage.py"),
                        "ingest",
                        "--client-id",
                        f"bench-ingest-{k}",
                        "--batch-ms",
                        str(args.batch_ms),
                        "--batch-messages",
                        str(args.batch_messages),
                    ],
                    env=env,
                )
            )
        time.sleep(3)  # workers connect and subscribe

        if args.rate:
            per_device = max(1, int(args.rate * args.duration / args.devices))
        else:
            per_device = max(1, args.messages // args.devices)
        groups = [device_files[p :: args.publishers] for p in range(args.publishers)]
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        start_at = time.time() + 3
        procs = []
        for group in groups:
            if not group:
                continue
            rate = args.rate * len(group) / args.devices if args.rate else 0
            procs.append(
                ctx.Process(
                    target=publisher,
                    args=(group,),
                    kwargs={
                        "ca_file": str(svc.BROKER_DIR / "device-ca.pem"),
                        "host": "127.0.0.1",
                        "port": svc.MQTT_DEVICE_PORT,
                        "messages": per_device,
                        "records": records,
                        "rate": rate,
                        "start_at": start_at,
                        "results": results,
                    },
                )
            )
        for proc in procs:
            proc.start()
        reports = [results.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        sent = sum(r["sent"] for r in reports)
        acked = sum(r["acked"] for r in reports)
        publish_done = max(r["finished"] for r in reports)
        expected_rows = acked * records

        # Wait until the stored rows stop growing (or all are in).
        last, stable_since = -1, time.monotonic()
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM telemetry_inferencerecord")
                count = cursor.fetchone()[0]
            if count >= expected_rows:
                break
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since > 20:
                break
            time.sleep(0.5)
        time.sleep(1)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), count(DISTINCT (device_id, seq, idx)), count(DISTINCT (device_id, seq)), "
                " extract(epoch FROM min(ts)), extract(epoch FROM max(pg_xact_commit_timestamp(xmin))), "
                " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
                "  (ORDER BY extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)) "
                "FROM telemetry_inferencerecord"
            )
            rows, distinct_rows, distinct_msgs, first_ts, last_commit, (p50, p99) = cursor.fetchone()
            cursor.execute("SELECT name, value FROM telemetry_ingestcounter ORDER BY name")
            counters = dict(cursor.fetchall())
        elapsed = float(last_commit) - float(first_ts)
        figures = {
            "bench": "ingest",
            "mode": args.mode,
            "devices": args.devices,
            "workers": args.workers,
            "rate_target": args.rate or None,
            "published": sent,
            "acked_by_broker": acked,
            "msgs_per_s": round(distinct_msgs / elapsed, 1),
            "records_per_s": round(distinct_rows / elapsed, 1),
            "publish_msgs_per_s": round(sent / (publish_done - start_at), 1),
            "p50_ms": round(p50 * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "lost": expected_rows - distinct_rows,
            "duplicated": rows - distinct_rows,
            "batches": counters.get("batches"),
            "mean_batch_ms": round(1000 * counters.get("batch_seconds_sum", 0) / max(1, counters.get("batches", 1)), 1),
        }
        print(f"published {sent} messages ({acked} acknowledged by the broker), {records} record(s) each")
        print(f"stored {distinct_rows} records of {expected_rows} in {elapsed:.2f}s with {args.workers} worker(s)")
        print(f"{figures['msgs_per_s']} msgs/s, {figures['records_per_s']} records/s")
        print(f"publish-to-commit p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
        print(f"lost {figures['lost']}, duplicated {figures['duplicated']}")
        print(json.dumps(figures))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        broker.stop()
        try:
            pg.stop(mode="immediate")
        except subprocess.CalledProcessError:
            pass


def start_postgres(svc):
    """tests.services' PostgreSQL, plus track_commit_timestamp (the commit time of every row)."""
    server = svc.PostgresServer.create(
        data_dir=svc.RUN_DIR / "pgdata",
        port=svc.PG_PORT,
        settings=f"{svc.TEST_POSTGRES_SETTINGS} -c track_commit_timestamp=on -c shared_buffers=256MB",
    )
    server.create_database("fleet")
    return server


if __name__ == "__main__":
    main()
