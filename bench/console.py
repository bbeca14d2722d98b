"""Console page latency at fleet scale: every page's p95 server time with a large fleet loaded.

Starts its own PostgreSQL (the test suite's helper), bulk-loads devices, groups, tags, certificates,
audit events and inference rollups with COPY, then requests each console page as a logged-in operator
N times through Django's test client (in process: the figure is the server's time, from request to
rendered response, without network) and prints the p95 per page. Ends with one JSON line:
{"bench": "console", "worst_page_p95_ms": ...}.

    .venv/bin/python bench/console.py                       # 100,000 devices, 10,000,000 rollup rows
    .venv/bin/python bench/console.py --devices 2000 --rows 200000 --requests 10   # a quick run

The telemetry rows are InferenceRollup rows (per device x model version x minute), the table the device
page charts read; raw inference records are loaded too when that table exists (see docs/performance.md,
"Console"). Also loaded: six presence transitions per active device (the device page's history), a fleet
and five group policies with budgets and this day's and month's budget counters of 30% of the active
devices (the dashboard's usage against budgets), and 240 gate evaluations of the rollout (its charts).
The console's model upload (the htmx POST that upload.js sends) is timed too.
"""

import argparse
import datetime as dt
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Importing the test services points DATABASE_URL and the secrets at a fresh throwaway server.
from tests import services as test_services

GROUPS = 20
TAGS = 50
HARDWARE = ["jetson-orin", "jetson-nano", "rpi5", "coral-devboard", "x86-openvino"]
RUNTIMES = ["tensorrt", "tflite", "onnxruntime", "openvino"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def copy_rows(cursor, table: str, columns: list[str], lines, batch: int = 200_000) -> int:
    """COPY tab-separated lines into table, in batches so memory stays flat."""
    total = 0
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        buffer = io.StringIO()
        pending = 0
        for line in lines:
            buffer.write(line)
            pending += 1
            if pending == batch:
                copy.write(buffer.getvalue())
                total += pending
                buffer = io.StringIO()
                pending = 0
        if pending:
            copy.write(buffer.getvalue())
            total += pending
    return total


def device_id(n: int) -> str:
    return f"dev-{n:07d}"


def load(database_url: str, devices: int, rows: int, seed: int = 7) -> dict:
    import psycopg

    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    iso = now.isoformat()
    t0 = time.perf_counter()
    raw = psycopg.connect(database_url)  # its own connection: COPY and VACUUM, outside Django's
    with raw.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        copy_rows(
            cur,
            "devices_devicegroup",
            ["id", "name", "description", "created_at"],
            (f"{g + 1}\tgroup-{g:02d}\tbench group {g}\t{iso}\n" for g in range(GROUPS)),
        )
        copy_rows(cur, "devices_tag", ["id", "name"], (f"{t + 1}\ttag-{t:02d}\n" for t in range(TAGS)))
        statuses = []

        def device_lines():
            for n in range(devices):
                r = rng.random()
                status = "active" if r < 0.90 else ("pending" if r < 0.95 else "revoked")
                statuses.append(status)
                online = "t" if status == "active" and rng.random() < 0.7 else "f"
                seen = (now - dt.timedelta(seconds=rng.randint(0, 14 * 86400))).isoformat()
                group = str(rng.randint(1, GROUPS)) if rng.random() < 0.9 else "\\N"
                yield (
                    f"{device_id(n)}\t{device_id(n)}\t{group}\t{rng.choice(HARDWARE)}\t{rng.choice(RUNTIMES)}\t0.1.0\t"
                    f"{status}\t{iso}\t{online}\t{seen}\t\\N\t\t\\N\n"
                )

        copy_rows(
            cur,
            "devices_device",
            [
                "id",
                "name",
                "group_id",
                "hardware_class",
                "runtime",
                "agent_version",
                "status",
                "created_at",
                "online",
                "last_seen_at",
                "token_hash",
                "pending_csr_pem",
                "enrollment_token_id",
            ],
            device_lines(),
        )

        def tag_lines():
            for n in range(devices):
                for tag in rng.sample(range(1, TAGS + 1), rng.randint(1, 2)):
                    yield f"{device_id(n)}\t{tag}\n"

        copy_rows(cur, "devices_device_tags", ["device_id", "tag_id"], tag_lines())
        not_before = (now - dt.timedelta(days=10)).isoformat()
        not_after = (now + dt.timedelta(days=80)).isoformat()
        copy_rows(
            cur,
            "devices_devicecertificate",
            ["serial", "device_id", "certificate_pem", "not_before", "not_after", "revoked_at", "created_at"],
            (
                f"{n:032x}\t{device_id(n)}\t(bench)\t{not_before}\t{not_after}\t\\N\t{not_before}\n"
                for n in range(devices)
                if statuses[n] != "pending"
            ),
        )
        copy_rows(
            cur,
            "fleet_auditevent",
            ["created_at", "actor", "action", "object_type", "object_id", "after"],
            (
                f"{not_before}\tdevice:{device_id(n)}\tdevice.enroll\tdevice\t{device_id(n)}\t"
                f'{{"status": "{statuses[n]}"}}\n'
                for n in range(devices)
            ),
        )
        per_device = max(1, rows // devices)
        hist = json.dumps({"63": 30, "66": 10, "80": 3})

        def rollup_lines():
            written = 0
            for n in range(devices):
                did = device_id(n)
                start = rng.randint(0, 23 * 60)  # each device reported for per_device minutes in the last day
                for minute in range(per_device):
                    if written == rows:
                        return
                    bucket = (now - dt.timedelta(minutes=start + minute)).isoformat()
                    yield (
                        f"{bucket}\t{did}\tdetector\t1.4.0\t43\t{minute % 3}\t1\t{43 * 0.85}\t43\t{43 * 22.0}\t"
                        f"21.5\t48.0\t{hist}\n"
                    )
                    written += 1

        loaded_rows = copy_rows(
            cur,
            "telemetry_inferencerollup",
            [
                "bucket",
                "device_id",
                "model_name",
                "model_version",
                "count",
                "error_count",
                "cloud_count",
                "confidence_sum",
                "confidence_count",
                "latency_sum_ms",
                "latency_p50_ms",
                "latency_p95_ms",
                "latency_hist",
            ],
            rollup_lines(),
        )
        presence_rows = load_presence(cur, rng, statuses, now)
        budget_rows = load_budgets(cur, rng, statuses, now)
        for table in ("devices_devicegroup", "devices_tag"):
            # Fixed table names, not input.
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
    raw.commit()
    load_s = time.perf_counter() - t0
    raw.autocommit = True
    with raw.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    raw.close()
    return {
        "load_s": load_s,
        "rollup_rows": loaded_rows,
        "statuses": statuses,
        "presence_rows": presence_rows,
        "budget_rows": budget_rows,
    }


PRESENCE_PER_DEVICE = 6  # connects and disconnects per active device over the last 14 days
CLOUD_SHARE = 0.3  # active devices that used the cloud gateway this month


def load_presence(cur, rng: random.Random, statuses: list[str], now: dt.datetime) -> int:
    """Presence history (telemetry.PresenceEvent): a few connects and disconnects per active device."""

    def lines():
        for n, status in enumerate(statuses):
            if status != "active":
                continue
            at = now - dt.timedelta(seconds=rng.randint(3600, 14 * 86400))
            for seq in range(1, PRESENCE_PER_DEVICE + 1):
                online = seq % 2 == 1
                cause = "connect" if online else rng.choice(["disconnect", "will"])
                at += dt.timedelta(seconds=rng.randint(60, 86400))
                yield f"{device_id(n)}\t{seq}\t{'t' if online else 'f'}\t{cause}\t{at.isoformat()}\t{at.isoformat()}\n"

    columns = ["device_id", "seq", "online", "cause", "at", "received_at"]
    return copy_rows(cur, "telemetry_presenceevent", columns, lines())


def load_budgets(cur, rng: random.Random, statuses: list[str], now: dt.datetime) -> int:
    """Cloud budgets on the dashboard: a fleet policy and five group policies with budgets, and this day's
    and month's budget counters (policies.BudgetCounter) of the devices that used the cloud."""
    iso = now.isoformat()
    fleet = {"budgets": {"day": {"tokens": 200000, "cost": 0.5}, "month": {"cost": 10.0, "requests": 20000}}}
    group = {"budgets": {"day": {"tokens": 100000}}}
    cur.execute(
        "INSERT INTO policies_policy (scope, document, version, created_at, updated_at) "
        "VALUES ('fleet', %s, 1, %s, %s)",
        [json.dumps(fleet), iso, iso],
    )
    for group_id in range(1, 6):
        cur.execute(
            "INSERT INTO policies_policy (scope, group_id, document, version, created_at, updated_at) "
            "VALUES ('group', %s, %s, 1, %s, %s)",
            [group_id, json.dumps(group), iso, iso],
        )
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)

    def lines():
        for n, status in enumerate(statuses):
            if status != "active" or rng.random() >= CLOUD_SHARE:
                continue
            tokens = rng.randint(0, 250_000)
            for window, start, scale in (("day", day, 1), ("month", month, 20)):
                yield (
                    f"{device_id(n)}\t{window}\t{start.isoformat()}\t{tokens * scale}\t{tokens * scale * 2}\t"
                    f"{tokens * scale // 500}\n"
                )

    columns = ["device_id", '"window"', "window_start", "tokens", "cost_micros", "requests"]  # WINDOW is reserved
    return copy_rows(cur, "policies_budgetcounter", columns, lines())


def load_raw_records(database_url: str, devices: int, rows: int, seed: int = 11) -> int:
    """Raw inference records (telemetry.models.InferenceRecord, day-partitioned), when that table exists:
    rows spread over the devices within the last day."""
    try:
        from telemetry.models import INFERENCE_RECORD_COLUMNS, InferenceRecord  # noqa: F401 - the table is there
        from telemetry.partitions import ensure_partitions
    except ImportError:
        return 0
    import psycopg

    now = dt.datetime.now(dt.UTC)
    ensure_partitions(today=(now - dt.timedelta(days=1)).date())
    rng = random.Random(seed)
    per_device = max(1, rows // devices)

    def lines():
        written = 0
        for n in range(devices):
            did = device_id(n)
            start = rng.randint(60, 23 * 3600)
            for seq in range(per_device):
                if written == rows:
                    return
                ts = (now - dt.timedelta(seconds=start + seq * 7)).isoformat()
                yield (
                    f"{did}\t{seq}\t0\t{ts}\t{ts}\tdetect\tdetector\t1.4.0\t{20 + seq % 30}\t0.87\tperson\t"
                    f"local\t\\N\t0\t0\t\\N\n"
                )
                written += 1

    with psycopg.connect(database_url) as raw, raw.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        loaded = copy_rows(
            cur,
            "telemetry_inferencerecord",
            INFERENCE_RECORD_COLUMNS,
            lines(),
        )
        raw.commit()
        raw.autocommit = True
        cur.execute("VACUUM ANALYZE telemetry_inferencerecord")
    return loaded


def start_rollout() -> int | None:
    """A release and a rollout started on every active device (its per-device rows are what the rollout
    page counts), when the updates app is installed."""
    try:
        from django.core.files.uploadedfile import SimpleUploadedFile

        from fleet.services import Actor
        from ota import rollouts, services
    except ImportError:
        return None
    import fleet.mqtt
    from fleet.celery import app as celery_app

    fleet.mqtt.publish_retained = lambda messages: None  # no broker in the benchmark
    celery_app.conf.task_always_eager = True  # nor a Celery worker: tasks run in process
    actor = Actor.system("bench")
    services.repositories_init(actor=actor, root_keys=1, root_threshold=1)
    artifact = services.artifact_upload(
        actor=actor,
        upload=SimpleUploadedFile("model.onnx", b"bench model " * 1000),
        name="detector",
        version="2.0.0",
        runtime="onnxruntime",
        hardware_classes=HARDWARE,
    )
    gates = {"error_rate": {"threshold": 0.02, "min_samples": 50}}
    rollout = rollouts.rollout_create(
        actor=actor,
        name="bench rollout",
        artifact=artifact,
        selector={},
        stages=[{"share": share, "soak_seconds": 600, "gates": gates} for share in (0.01, 0.1, 0.5, 1.0)],
    )
    from django.db import transaction

    with transaction.atomic():
        rollouts.rollout_start(actor=actor, rollout=rollout)
    rollouts.rollout_evaluate(rollout=rollout)
    # Four hours of gate ticks for the rollout page's charts: copies of the real evaluation, a minute apart.
    from fleet.models import AuditEvent

    evaluation = AuditEvent.objects.get(action="rollout.gate_evaluation", object_id=str(rollout.pk))
    at = dt.datetime.fromisoformat(evaluation.after["at"])
    AuditEvent.objects.bulk_create(
        AuditEvent(
            actor=evaluation.actor,
            action=evaluation.action,
            object_type=evaluation.object_type,
            object_id=evaluation.object_id,
            after=evaluation.after | {"at": (at - dt.timedelta(minutes=minutes)).isoformat()},
        )
        for minutes in range(1, GATE_TICKS)
    )
    return rollout.pk


GATE_TICKS = 240


def time_uploads(client, requests: int) -> list[float]:
    """The console's model upload (the fragment upload.js posts): store, hash and sign a small release."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    times = []
    for n in range(requests + 1):
        form = {
            "file": SimpleUploadedFile("model.onnx", b"bench upload " * 4096),
            "name": "bench-upload",
            "version": f"1.0.{n}",
            "runtime": "onnxruntime",
            "hardware_classes": "rpi5",
        }
        start = time.perf_counter()
        response = client.post("/releases/upload/", form, HTTP_HX_REQUEST="true")
        if n:  # the first one warms up
            times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 201, response.content[:500]
    return times


def app_pages(rollout_id: int | None) -> dict[str, list[str]]:
    """Pages of the apps that are installed (each app's console routes exist only when its code does)."""
    from django.urls import NoReverseMatch, reverse

    out = {}
    for name, url_name, args in (
        ("rollouts", "ota:rollouts", []),
        ("rollout page", "ota:rollout", [rollout_id]),
        ("releases", "ota:releases", []),
        ("policies", "policies:list", []),
        ("telemetry ingest", "telemetry:ingest", []),
    ):
        if None in args:
            continue
        try:
            out[name] = [reverse(url_name, args=args)]
        except NoReverseMatch:
            pass
    return out


def pages(devices: int, statuses: list[str]) -> dict[str, list[str]]:
    """Each page to time, with the URLs to cycle through (several devices, so caches do not flatter)."""
    mid = device_id(devices // 2)
    sample = [device_id(n) for n in range(0, devices, max(1, devices // 25))]
    active = [d for d in sample if statuses[int(d[4:])] == "active"] or sample
    return {
        "dashboard": ["/"],
        "dashboard (htmx poll)": ["/?htmx"],
        "devices": ["/devices/"],
        "devices, page from the middle": [f"/devices/?after={mid}"],
        "devices, id prefix": [f"/devices/?id_prefix={device_id(devices // 3)[:-2]}"],
        "devices, status=pending": ["/devices/?status=pending"],
        "devices, group": ["/devices/?group=group-07"],
        "devices, tag": ["/devices/?tag=tag-13"],
        "devices, hardware": ["/devices/?hardware_class=rpi5"],
        "devices, offline": ["/devices/?status=active&online=false"],
        "devices, seen in the last hour": ["/devices/?seen=1h"],
        "devices, not seen in 7 days": ["/devices/?seen=not-7d"],
        "devices, group+hardware+tag": ["/devices/?group=group-03&hardware_class=rpi5&tag=tag-21"],
        "device page (24h charts)": [f"/devices/{d}/" for d in active],
        "device page (7d charts)": [f"/devices/{d}/?window=7d" for d in active],
        "approvals": ["/approvals/"],
        "enrollment tokens": ["/enrollment-tokens/"],
        "groups": ["/groups/"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000_000, help="inference rollup rows")
    parser.add_argument("--requests", type=int, default=30, help="requests per page")
    args = parser.parse_args()

    server = test_services._start_postgres()
    try:
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE fleet")
        os.environ["FLEET_STATE_DIR"] = str(test_services.RUN_DIR / "state")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.test import Client

        from fleet.models import Role
        from tests.factories import make_operator

        settings.ALLOWED_HOSTS = ["*"]
        call_command("migrate", verbosity=0)
        print(f"loading {args.devices:,} devices and {args.rows:,} inference rollup rows with COPY ...", flush=True)
        loaded = load(server.url("fleet"), args.devices, args.rows)
        print(
            f"loaded in {loaded['load_s']:.0f} s ({loaded['rollup_rows']:,} rollup rows, "
            f"{loaded['presence_rows']:,} presence events, {loaded['budget_rows']:,} budget counters)",
            flush=True,
        )
        started = time.perf_counter()
        raw_rows = load_raw_records(server.url("fleet"), args.devices, args.rows)
        if raw_rows:
            print(f"loaded {raw_rows:,} raw inference records in {time.perf_counter() - started:.0f} s", flush=True)
        rollout_id = start_rollout()

        user, _token = make_operator(role=Role.OPERATOR, username="bench-operator")
        client = Client()
        client.force_login(user)
        results = {}
        for name, urls in (pages(args.devices, loaded["statuses"]) | app_pages(rollout_id)).items():
            headers = {}
            if urls[0] == "/?htmx":
                urls, headers = ["/"], {"HTTP_HX_REQUEST": "true"}
            client.get(urls[0], **headers)  # warm up: connection, templates
            times, cpu = [], []
            for i in range(args.requests):
                url = urls[i % len(urls)]
                start, start_cpu = time.perf_counter(), time.process_time()
                response = client.get(url, **headers)
                times.append((time.perf_counter() - start) * 1000)
                # The web process's own CPU (view, ORM, template; not PostgreSQL's): steadier than wall time
                # on a busy machine.
                cpu.append((time.process_time() - start_cpu) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            results[name] = {"p50_ms": statistics.median(times), "p95_ms": pct(times, 0.95)}
            figures = results[name]
            print(
                f"{name:34s} p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms   "
                f"web CPU p50 {statistics.median(cpu):6.1f} ms",
                flush=True,
            )
        if rollout_id is not None:
            times = time_uploads(client, args.requests)
            results["release upload (htmx POST)"] = {"p50_ms": statistics.median(times), "p95_ms": pct(times, 0.95)}
            figures = results["release upload (htmx POST)"]
            print(
                f"{'release upload (htmx POST)':34s} p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms"
            )
        worst = max(results.items(), key=lambda item: item[1]["p95_ms"])
        print(f"worst page: {worst[0]} (p95 {worst[1]['p95_ms']:.1f} ms; target 300 ms)")
        print(
            json.dumps(
                {
                    "bench": "console",
                    "devices": args.devices,
                    "rollup_rows": loaded["rollup_rows"],
                    "raw_record_rows": raw_rows,
                    "requests_per_page": args.requests,
                    "worst_page": worst[0],
                    "worst_page_p95_ms": round(worst[1]["p95_ms"], 1),
                }
            )
        )
    finally:
        try:
            server.stop(mode="immediate")
        finally:
            import shutil

            shutil.rmtree(test_services.RUN_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
