"""Benchmark: enrollment throughput over real HTTP, and device-list latency at a million devices.

    .venv/bin/python bench/enroll.py                      # 3,000 enrollments, 1,000,000 rows
    .venv/bin/python bench/enroll.py --devices 300 --rows 20000   # a quick run

1. starts its own PostgreSQL, migrates, and runs the platform under gunicorn (sync workers) in other
   processes;
2. pre-generates one P-256 key and CSR per device (not timed), then enrolls them concurrently through
   POST /api/v1/enroll/ and reports enrollments/s;
3. bulk-loads ``--rows`` devices with COPY (groups, tags for a third, statuses, last-seen times),
   ANALYZEs, and measures the latency of GET /api/v1/devices/ (first page; by status, group, tag, a
   rare tag, last seen; a deep cursor page) one request at a time, reporting p50/p99 per query;
4. ends with one JSON line: {"bench": "enroll", "enroll_per_s": ..., "list_p99_ms": ...}, where
   list_p99_ms is the worst p99 over the list queries.

Targets (docs/performance.md): >= 300 enrollments/s and list p99 < 100 ms at 1,000,000 devices.
"""

import argparse
import base64
import concurrent.futures
import http.client
import io
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import BenchPostgres, free_port, wait_for_port

from tests.processes import process_stat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agent"))
from fleet_agent.identity import build_csr_pem, generate_private_key  # noqa: E402

GROUPS = 50
TAGS = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def platform_env(pg: BenchPostgres) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "DATABASE_"))}
    return env | {
        "DATABASE_URL": pg.url(),
        # Persistent connections: a gunicorn sync worker reuses its connection across requests.
        "DATABASE_CONN_MAX_AGE": "600",
        "FLEET_SECRET_KEY": secrets.token_urlsafe(48),
        "FLEET_KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "FLEET_STATE_DIR": str(pg.root / "state"),
        "FLEET_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
    }


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def start_gunicorn(env: dict[str, str], workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    process = subprocess.Popen(
        [
            *(gunicorn, "fleet.wsgi:application", "--workers", str(workers), "--bind", f"127.0.0.1:{port}"),
            *("--worker-class", "sync", "--log-level", "warning", "--backlog", "2048"),
        ],
        cwd=ROOT,
        env=env,
    )
    wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


def admin_token(env: dict[str, str]) -> str:
    output = manage(env, "ensure_operator", "--username", "bench")
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("API token:"))


# --- CPU accounting ------------------------------------------------------------------------------
# The machine may be shared (the figures in docs/performance.md were taken next to other builds), so
# besides wall-clock rates the bench reports the CPU time each side spends per request: that figure does
# not depend on what else runs, and 2 cores / CPU-per-request is the rate an idle 2-core machine reaches.


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            table[int(entry)] = process_stat(int(entry))
        except OSError:
            continue
    return table


def tree_cpu_seconds(root_pid: int) -> float:
    table = _process_table()
    pids, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in pids]
        pids.update(children)
        frontier += children
    return sum(table[pid][1] for pid in pids if pid in table)


class CpuMeter:
    """CPU seconds spent by the server (gunicorn tree), the database (postmaster tree) and this client."""

    def __init__(self, server_pid: int, database_pid: int):
        self.pids = {"server": server_pid, "database": database_pid}

    def sample(self) -> dict[str, float]:
        usage = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        own = os.times()
        return usage | {"client": own.user + own.system}

    @staticmethod
    def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
        return {name: round((after[name] - before[name]) * 1000 / requests, 2) for name in before}


# --- enrollment ----------------------------------------------------------------------------------


def bench_enrollment(
    base_url: str, api_token: str, devices: int, concurrency: int, meter: CpuMeter
) -> tuple[float, dict[str, float]]:
    headers = {"Authorization": f"Token {api_token}"}
    created = httpx.post(
        f"{base_url}/api/v1/enrollment-tokens/",
        json={"name": "bench", "max_uses": devices + concurrency},
        headers=headers,
        timeout=30,
    )
    created.raise_for_status()
    token = created.json()["token"]
    print(f"generating {devices + concurrency} keys and CSRs (not timed)...", flush=True)
    bodies = [
        {"token": token, "csr": build_csr_pem(generate_private_key(), f"bench-dev-{i:06d}"), "hardware_class": "rpi4"}
        for i in range(devices + concurrency)
    ]
    host, port = base_url.removeprefix("http://").split(":")
    payloads = [json.dumps(body).encode() for body in bodies]

    def enroll(payload: bytes) -> int:
        # http.client, not httpx: the client shares the machine's two cores with the server, so it
        # should cost as little CPU per request as possible. gunicorn sync workers close each connection.
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", "/api/v1/enroll/", payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        # Warm-up (not timed): every worker process loads the CA and opens its database connection.
        warm = list(pool.map(enroll, payloads[:concurrency]))
        assert all(status == 201 for status in warm), warm
        cpu_before = meter.sample()
        started = time.perf_counter()
        statuses = list(pool.map(enroll, payloads[concurrency:]))
        elapsed = time.perf_counter() - started
        cpu = CpuMeter.per_request_ms(cpu_before, meter.sample(), devices)
    failed = [s for s in statuses if s != 201]
    if failed:
        raise SystemExit(f"{len(failed)} enrollments failed, e.g. HTTP {failed[0]}")
    rate = devices / elapsed
    print(f"enrolled {devices} devices in {elapsed:.2f}s with {concurrency} concurrent clients: {rate:.0f}/s")
    print(
        f"CPU per enrollment: server {cpu['server']} ms, database {cpu['database']} ms, client {cpu['client']} ms"
        f" -> {2000 / (cpu['server'] + cpu['database']):.0f}/s on 2 idle cores for server + database"
    )
    return rate, cpu


# --- a million devices ---------------------------------------------------------------------------


def bulk_load(database_url: str, rows: int) -> None:
    rng = random.Random(42)
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices_devicegroup (name, description, created_at) "
            "SELECT 'g-' || lpad(n::text, 2, '0'), '', now() FROM generate_series(0, %s) n",
            (GROUPS - 1,),
        )
        conn.execute(
            "INSERT INTO devices_tag (name) SELECT 't-' || lpad(n::text, 2, '0') FROM generate_series(0, %s) n "
            "UNION ALL SELECT 'rare'",
            (TAGS - 1,),
        )
        group_ids = [r[0] for r in conn.execute("SELECT id FROM devices_devicegroup ORDER BY name")]
        tag_ids = {name: pk for pk, name in conn.execute("SELECT id, name FROM devices_tag")}
        common_tags = [tag_ids[f"t-{n:02d}"] for n in range(TAGS)]
        now = time.time()
        device_lines, tag_lines = io.StringIO(), io.StringIO()
        for i in range(rows):
            device_id = f"fleet-{i:08d}"
            roll = rng.random()
            status = "active" if roll < 0.9 else ("pending" if roll < 0.95 else "revoked")
            last_seen = (
                r"\N"
                if rng.random() < 0.05
                else time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(now - rng.random() * 30 * 86400))
            )
            hardware = "jetson" if i % 4 == 0 else "rpi4"
            group = str(group_ids[rng.randrange(GROUPS)]) if rng.random() < 0.9 else r"\N"
            device_lines.write(
                f"{device_id}\t{device_id}\t{group}\t{hardware}\tonnx\t1.0.0\t{status}\t"
                f"2026-01-01 00:00:00+00\tf\t{last_seen}\t\\N\t\t\\N\n"
            )
            if i % 3 == 0:
                tag_lines.write(f"{device_id}\t{common_tags[rng.randrange(TAGS)]}\n")
            if i % 10_000 == 0:
                tag_lines.write(f"{device_id}\t{tag_ids['rare']}\n")
        with conn.cursor() as cur:
            with cur.copy(
                "COPY devices_device (id, name, group_id, hardware_class, runtime, agent_version, status, created_at,"
                " online, last_seen_at, token_hash, pending_csr_pem, enrollment_token_id) FROM STDIN"
            ) as copy:
                copy.write(device_lines.getvalue())
            with cur.copy("COPY devices_device_tags (device_id, tag_id) FROM STDIN") as copy:
                copy.write(tag_lines.getvalue())
        conn.execute("VACUUM ANALYZE devices_device")
        conn.execute("VACUUM ANALYZE devices_device_tags")
        conn.execute("ANALYZE")
        total = conn.execute("SELECT count(*) FROM devices_device").fetchone()[0]
    print(f"bulk-loaded {rows} devices with COPY in {time.perf_counter() - started:.1f}s ({total} rows in total)")


def deep_cursor(position: str) -> str:
    """DRF's cursor format ("p=<last id>" in base64): lets the bench jump to a page deep in the list."""
    return base64.b64encode(urlencode({"p": position}).encode()).decode()


def list_queries(rows: int) -> dict[str, str]:
    seen_after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    return {
        "first page": "",
        "status=pending": "status=pending",
        "group": "group=g-07",
        "tag": "tag=t-03",
        "rare tag": "tag=rare",
        "hardware+status": "hardware_class=jetson&status=active",
        "last_seen_after (1h)": urlencode({"last_seen_after": seen_after}),
        "deep cursor": urlencode({"cursor": deep_cursor(f"fleet-{int(rows * 0.9):08d}")}),
    }


def bench_listing(
    base_url: str, api_token: str, rows: int, samples: int, meter: CpuMeter
) -> dict[str, dict[str, float]]:
    results = {}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Token {api_token}"}, timeout=60) as client:
        for label, query in list_queries(rows).items():
            url = f"/api/v1/devices/?{query}"
            for _ in range(5):  # warm caches and connections
                client.get(url).raise_for_status()
            timings = []
            cpu_before = meter.sample()
            for _ in range(samples):
                started = time.perf_counter()
                response = client.get(url)
                timings.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            cpu = CpuMeter.per_request_ms(cpu_before, meter.sample(), samples)
            count = len(response.json()["results"])
            results[label] = {
                "p50_ms": round(statistics.median(timings), 1),
                "p99_ms": round(percentile(timings, 99), 1),
                "results": count,
                "server_cpu_ms": cpu["server"],
                "database_cpu_ms": cpu["database"],
            }
            print(
                f"{label:<22} p50 {results[label]['p50_ms']:6.1f} ms  p99 {results[label]['p99_ms']:6.1f} ms  "
                f"CPU/request: server {cpu['server']:5.1f} ms, database {cpu['database']:5.1f} ms  ({count} results)",
                flush=True,
            )
    return results


def explain(env: dict[str, str], rows: int) -> None:
    """Print the plan of every list query as the API runs it (FilterSet + cursor ordering + page limit)."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.http import QueryDict

    from devices import selectors
    from devices.filters import DeviceFilterSet

    for label, query in list_queries(rows).items():
        params = QueryDict(query)
        queryset = DeviceFilterSet(params, queryset=selectors.device_list()).qs
        if "cursor" in params:
            queryset = queryset.filter(pk__gt=f"fleet-{int(rows * 0.9):08d}")
        plan = queryset.order_by("pk")[:101].explain(analyze=True, buffers=True)
        print(f"--- {label}\n{plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=3000, help="devices to enroll over HTTP")
    parser.add_argument("--rows", type=int, default=1_000_000, help="device rows to bulk-load for the list bench")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent enrolling clients")
    parser.add_argument("--samples", type=int, default=200, help="requests per list query")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of every list query")
    args = parser.parse_args()

    pg = BenchPostgres.start()
    server = None
    try:
        env = platform_env(pg)
        manage(env, "migrate", "--no-input")
        api_token = admin_token(env)
        server, base_url = start_gunicorn(env, args.workers)
        print(f"platform: gunicorn, {args.workers} sync workers at {base_url}; PostgreSQL on port {pg.port}")
        meter = CpuMeter(server.pid, pg.postmaster_pid())
        enroll_per_s, enroll_cpu = bench_enrollment(base_url, api_token, args.devices, args.concurrency, meter)
        bulk_load(pg.url(), args.rows)
        if args.explain:
            explain(env, args.rows)
        listing = bench_listing(base_url, api_token, args.rows, args.samples, meter)
        list_p99 = max(result["p99_ms"] for result in listing.values())
        list_p50 = max(result["p50_ms"] for result in listing.values())
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        pg.stop()
    print(
        json.dumps(
            {
                "bench": "enroll",
                "enroll_per_s": round(enroll_per_s, 1),
                "enroll_server_db_cpu_ms": round(enroll_cpu["server"] + enroll_cpu["database"], 2),
                "list_p50_ms": list_p50,
                "list_p99_ms": list_p99,
                "devices_enrolled": args.devices,
                "rows": args.rows,
                "workers": args.workers,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
