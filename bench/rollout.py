"""Benchmark of rollouts and the director at fleet scale.

    .venv/bin/python bench/rollout.py [--devices 1000000] [--tokens 1000] [--seconds 10] [--start-only]

Starts its own PostgreSQL (tests/services.py helpers), bulk-loads the devices (COPY), each already
running detector 1.0.0 per the director, then measures:

- ``start_1m_s``: rollout_start of a four-stage rollout (1%, 10%, 50%, 100%) of detector 2.0.0: the
  cohort of every targeted device computed and stored, and stage 1 assigned (director rows written,
  notifications enqueued; the enqueue is a no-op here, as Redis is not part of the measurement);
  ``start_db_cpu_s`` is the CPU time the PostgreSQL backend spent on it (less noisy on a shared machine);
- ``gate_tick_s``: one gate tick (rollouts_tick) with five minutes of rollups present for every device
  (the cohort on 2.0.0, everyone else on 1.0.0);
- ``director_per_s``: director ``timestamp.json`` responses per second over HTTP from gunicorn (2 sync
  workers, another process), with ``--tokens`` distinct devices, after each device's first (signing)
  fetch. The first-fetch rate (three ed25519 signatures per response) is printed too.

Ends with one JSON line.
"""

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import services as test_services  # noqa: E402 - sets DATABASE_URL etc. for this run
from tests.processes import process_stat  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")


def create_database(server) -> None:
    import psycopg

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE fleet")


def load_devices(n: int, tokens: int) -> list[str]:
    """COPY n active rpi4 devices; the first ``tokens`` get a device token (returned)."""
    from django.db import connection

    from devices.services import DEVICE_TOKEN_PREFIX, hash_secret

    secrets_out = []
    now = dt.datetime.now(dt.UTC)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(
            "COPY devices_device (id, name, hardware_class, runtime, agent_version, status, created_at, online,"
            " token_hash, pending_csr_pem) FROM STDIN"
        ) as copy:
            for i in range(n):
                token_hash = None
                if i < tokens:
                    secret = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
                    secrets_out.append(secret)
                    token_hash = hash_secret(secret)
                row = (f"dev-{i:07d}", "", "rpi4", "onnx", "0.1.0", "active", now, i % 50 != 0, token_hash, "")
                copy.write_row(row)
        cursor.execute("ANALYZE devices_device")
    return secrets_out


def assign_everyone(artifact_id: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ota_directorstate (device_id, artifact_id, rollback, version, dirty, updated_at)"
            " SELECT id, %s, false, 0, true, now() FROM devices_device",
            [artifact_id],
        )
        cursor.execute("ANALYZE ota_directorstate")


def load_rollups(rollout, start: dt.datetime, minutes: int) -> int:
    """Per device per minute: cohort devices on 2.0.0, the others on 1.0.0 (COPY)."""
    from django.db import connection

    from ota.models import RolloutDevice
    from telemetry import histogram

    cohort = set(RolloutDevice.objects.filter(rollout=rollout, stage=0).values_list("device_id", flat=True))
    hist_new, hist_old = {}, {}
    histogram.add(hist_new, 52.0, 40)
    histogram.add(hist_old, 50.0, 40)
    new_json, old_json = json.dumps(hist_new), json.dumps(hist_old)
    rows = 0
    with connection.cursor() as cursor:
        device_ids = [row[0] for row in cursor.execute("SELECT id FROM devices_device").fetchall()]
        with cursor.cursor.copy(
            "COPY telemetry_inferencerollup (bucket, device_id, model_name, model_version, count, error_count,"
            " cloud_count, confidence_sum, confidence_count, latency_sum_ms, latency_hist) FROM STDIN"
        ) as copy:
            for minute in range(minutes):
                bucket = start + dt.timedelta(minutes=minute)
                for device_id in device_ids:
                    new = device_id in cohort
                    copy.write_row(
                        (
                            bucket,
                            device_id,
                            "detector",
                            "2.0.0" if new else "1.0.0",
                            40,
                            0,
                            1,
                            36.0,
                            40,
                            (52.0 if new else 50.0) * 40,
                            new_json if new else old_json,
                        )
                    )
                    rows += 1
        cursor.execute("ANALYZE telemetry_inferencerollup")
    return rows


def backend_cpu_s() -> float:
    """CPU seconds used so far by this process's PostgreSQL backend (same machine): what a start costs
    the database, steadier than wall-clock time on a machine shared with other work."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return process_stat(pid)[1]


def run_gunicorn(port: int) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="600")
    process = subprocess.Popen(
        # Threaded workers keep connections alive, as devices polling through a proxy do.
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "fleet.wsgi",
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "--keep-alive",
            "30",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    test_services.wait_for_port(port)
    return process


def hammer(url: str, tokens: list[str], seconds: float, threads: int) -> tuple[int, int]:
    """(ok responses, errors) of GET url with the tokens round-robin, from ``threads`` keep-alive clients."""
    import urllib3

    counts = [0, 0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        pool = urllib3.PoolManager(maxsize=1)
        ok = bad = 0
        i = offset
        while time.monotonic() < stop:
            token = tokens[i % len(tokens)]
            i += threads
            response = pool.request("GET", url, headers={"Authorization": f"Device {token}"}, retries=False)
            if response.status == 200:
                ok += 1
            else:
                bad += 1
        with lock:
            counts[0] += ok
            counts[1] += bad

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--tokens", type=int, default=1000, help="distinct devices hitting the director")
    parser.add_argument("--seconds", type=float, default=10.0, help="director measurement time")
    parser.add_argument("--threads", type=int, default=8, help="HTTP client threads")
    parser.add_argument("--rollup-minutes", type=int, default=5)
    parser.add_argument(
        "--start-only", action="store_true", help="stop after the rollout start (no rollups, gate tick, director)"
    )
    args = parser.parse_args()

    server = test_services._start_postgres()
    gunicorn = None
    try:
        create_database(server)
        import django

        django.setup()
        from django.core.files.base import ContentFile
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from fleet.services import Actor
        from ota import rollouts, services, tasks

        tasks.publish_assignments.delay = lambda device_ids: None  # Redis is not part of the measurement
        actor = Actor.system("bench")
        services.repositories_init(actor=actor)

        def upload(version: str):
            return services.artifact_upload(
                actor=actor,
                upload=ContentFile(b"w" * 4096, name="model.onnx"),
                name="detector",
                version=version,
                runtime="onnx",
                hardware_classes=["rpi4"],
            )

        v1, v2 = upload("1.0.0"), upload("2.0.0")
        t = time.perf_counter()
        tokens = load_devices(args.devices, args.tokens)
        assign_everyone(v1.pk)
        print(f"loaded {args.devices} devices (COPY) in {time.perf_counter() - t:.1f} s")

        gates = {
            "p95_latency_regression": {"threshold": 0.2, "min_samples": 1000},
            "error_rate": {"threshold": 0.01, "min_samples": 1000},
            "cloud_escalation_rate": {"threshold": 0.05, "min_samples": 1000},
            "confidence_shift": {"threshold": 0.05, "min_samples": 1000},
            "offline_rate": {"threshold": 0.05, "min_samples": 100},
            "install_failure_rate": {"threshold": 0.05, "min_samples": 100},
        }
        stages = [{"share": s, "soak_seconds": 3600, "gates": gates} for s in (0.01, 0.10, 0.50, 1.0)]
        if os.environ.get("BENCH_PROFILE"):
            from ota import selectors

            def timed(module, name):
                inner = getattr(module, name)

                def wrapper(*a, **kw):
                    t0 = time.perf_counter()
                    try:
                        return inner(*a, **kw)
                    finally:
                        print(f"  {name}: {time.perf_counter() - t0:.3f} s")

                setattr(module, name, wrapper)

            for module, name in [
                (rollouts, "_insert_targets"),
                (rollouts, "_assign"),
                (services, "director_assign"),
                (rollouts, "_expire_and_retry"),
                (selectors, "cohort_metrics"),
            ]:
                timed(module, name)
        rollout = rollouts.rollout_create(actor=actor, name="bench", artifact=v2, selector={}, stages=stages)
        started_at = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        if os.environ.get("BENCH_PROFILE"):
            from django.db import connection, transaction

            with transaction.atomic(), connection.cursor() as cursor:
                sql, params = rollouts._insert_targets_sql(rollout, join_at_stage=None)
                cursor.execute("SET LOCAL work_mem = '64MB'")
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                print("\n".join(row[0] for row in cursor.fetchall()))
                transaction.set_rollback(True)
        db_cpu, cpu, t = backend_cpu_s(), time.process_time(), time.perf_counter()
        rollouts.rollout_start(actor=actor, rollout=rollout, now=started_at)
        start_s = time.perf_counter() - t
        start_cpu_s, start_db_cpu_s = time.process_time() - cpu, backend_cpu_s() - db_cpu
        from ota.models import RolloutDevice

        targets = RolloutDevice.objects.filter(rollout=rollout).count()
        first = RolloutDevice.objects.filter(rollout=rollout, stage=0).count()
        print(
            f"rollout start: {targets} targets in 4 stages, {first} assigned in stage 1: {start_s:.2f} s"
            f" (CPU: PostgreSQL backend {start_db_cpu_s:.2f} s, bench process {start_cpu_s:.2f} s;"
            f" load average {os.getloadavg()[0]:.1f})"
        )

        if args.start_only:
            print(
                json.dumps(
                    {
                        "bench": "rollout",
                        "devices": args.devices,
                        "start_1m_s": round(start_s, 3),
                        "start_db_cpu_s": round(start_db_cpu_s, 2),
                    }
                )
            )
            return
        t = time.perf_counter()
        rows = load_rollups(rollout, started_at, args.rollup_minutes)
        print(f"loaded {rows} rollup rows (COPY) in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        results = rollouts.rollouts_tick(now=started_at + dt.timedelta(minutes=args.rollup_minutes))
        tick_s = time.perf_counter() - t
        decision = results[0]
        print(
            f"gate tick: {tick_s:.3f} s (decision {decision['decision']}, cohort {decision['cohort']['inferences']}"
            f" inferences on {decision['cohort']['devices']} devices, control {decision['control']['devices']} devices)"
        )

        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            from django.test import Client

            client = Client(HTTP_HOST="127.0.0.1")
            for token in tokens[:50]:
                client.get("/ota/director/timestamp.json", HTTP_AUTHORIZATION=f"Device {token}")
            profiler = cProfile.Profile()
            profiler.enable()
            t = time.perf_counter()
            for token in tokens[:50] * 4:
                client.get("/ota/director/timestamp.json", HTTP_AUTHORIZATION=f"Device {token}")
            print(f"in-process: {200 / (time.perf_counter() - t):.0f}/s")
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        port = test_services.free_port()
        gunicorn = run_gunicorn(port)
        url = f"http://127.0.0.1:{port}/ota/director/timestamp.json"
        # First fetch of each device signs its director files (3 signatures); then it is served cached.
        first_ok, first_bad = 0, 0
        t = time.perf_counter()
        import urllib3

        pool = urllib3.PoolManager()
        for token in tokens:
            status = pool.request("GET", url, headers={"Authorization": f"Device {token}"}).status
            first_ok, first_bad = first_ok + (status == 200), first_bad + (status != 200)
        first_per_s = first_ok / (time.perf_counter() - t)
        print(f"director first fetch (signs): {first_per_s:.0f}/s sequential, {first_bad} errors")
        ok, bad = hammer(url, tokens, seconds=args.seconds, threads=args.threads)
        director_per_s = ok / args.seconds
        print(f"director cached: {director_per_s:.0f} responses/s over {args.seconds:.0f} s, {bad} errors")
        print(
            json.dumps(
                {
                    "bench": "rollout",
                    "devices": args.devices,
                    "start_1m_s": round(start_s, 3),
                    "start_db_cpu_s": round(start_db_cpu_s, 2),
                    "gate_tick_s": round(tick_s, 3),
                    "director_per_s": round(director_per_s, 1),
                }
            )
        )
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
            gunicorn.wait(timeout=10)
        try:
            server.stop(mode="immediate")
        finally:
            import shutil

            shutil.rmtree(test_services.RUN_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
