"""Benchmark of the cloud-LLM policy path: decide() in-process, the gateway's added latency over calling
the upstream directly, and gateway requests/s.

    .venv/bin/python bench/policy.py [--seconds 10] [--clients 16] [--workers 2] [--threads 8]

It starts its own PostgreSQL (tests/services.py helpers), a loopback OpenAI-compatible upstream in another
process (tests/policies/upstream.py) and the platform under gunicorn in another process, enrolls a device,
then measures. Prints figures, then one JSON line:
{"bench": "policy", "decide_p50_us": ..., "gateway_overhead_p99_ms": ..., "gateway_rps": ...}
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Points DATABASE_URL and secrets at this run's own services (before Django reads its settings).
from tests import services as test_services  # noqa: E402
from tests.processes import process_stat  # noqa: E402

POLICY = {
    "tasks": {
        "chat": {
            "routes": ["local", "cloud"],
            "models": ["small", "large"],
            "prefer": "cloud",
            "max_output_tokens": 64,
        },
        "summarize": {"routes": ["local", "cloud"], "models": ["small"], "max_input_tokens": 4000},
        "*": {"routes": ["local"]},
    },
    "data_classes": {"public": "allow", "internal": "allow", "personal": "redact_then_cloud", "health": "never"},
    "budgets": {"month": {"tokens": 10**12, "cost": 10**9, "requests": 10**9}},
}
REQUEST = {"model": "small", "max_tokens": 16, "messages": [{"role": "user", "content": "How warm is the room?"}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_decide(iterations: int = 200_000) -> dict:
    from fleet_agent.policy import BudgetLeft, compile_policy, decide, merge_policies

    group = {"tasks": {"*": {}, "chat": {"models": ["small"]}}, "data_classes": {"internal": "never"}}
    policy = compile_policy(merge_policies([("fleet", POLICY), ("group:g", group), ("device:d", {})]).document)
    inputs = [
        {"task": "chat", "data_class": "public", "tokens_in": 200, "tokens_out": 50},
        {"task": "chat", "data_class": "health", "tokens_in": 200, "tokens_out": 50},
        {"task": "summarize", "data_class": "personal", "tokens_in": 900, "tokens_out": 100, "local_available": False},
        {"task": "chat", "data_class": "public", "budget_left": BudgetLeft(tokens=10, cost=1.0, requests=3)},
        {"task": "vision.describe", "data_class": "internal", "connectivity": "offline"},
    ]
    timings = []
    clock = time.perf_counter_ns
    for index in range(iterations):
        kwargs = inputs[index % len(inputs)]
        start = clock()
        decide(policy, **kwargs)
        timings.append(clock() - start)
    return {"p50_us": percentile(timings, 0.5) / 1000, "p99_us": percentile(timings, 0.99) / 1000}


def children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent, _ = process_stat(int(entry.name))
            except OSError:
                continue
            if parent == ppid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time of each process (what they cost, whatever else competes for the cores)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = process_stat(pid)[1]
        except OSError:
            continue
    return out


def cpu_spent(parent: int, before: dict[int, float]) -> float:
    """CPU the children of ``parent`` spent since ``before``, counting children started in between (a
    PostgreSQL backend for each gunicorn thread's first connection) from zero."""
    after = cpu_seconds(children(parent))
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def start_database():
    import psycopg

    server = test_services._start_postgres()
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE fleet")
    return server


def prepare_platform(devices: int) -> list[str]:
    """Migrate, write the fleet policy, enroll devices; returns their device tokens."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
    django.setup()
    from django.core.management import call_command

    from policies.models import Policy
    from tests.factories import make_device, make_token

    call_command("migrate", verbosity=0)
    # Written directly: policy_create would enqueue a republish, and this run has no broker or Celery.
    Policy.objects.create(scope="fleet", document=POLICY)
    token = make_token(max_uses=devices)
    return [make_device(f"bench-device-{i}", token=token)[0].device_token for i in range(devices)]


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class KeepAliveClient:
    """The load generator: one keep-alive connection, the request body encoded once. The stdlib client
    costs about a third of httpx's CPU per request, which matters because the load generator shares the
    two cores with the platform it measures."""

    def __init__(self, url: str, headers: dict):
        parts = urlsplit(url)
        self.path = parts.path
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.headers = {**headers, "Content-Type": "application/json"}
        self.body = json.dumps(REQUEST).encode()

    def post(self) -> tuple[int, bytes]:
        self.connection.request("POST", self.path, body=self.body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


def latencies(client: KeepAliveClient, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        status, content = client.post()
        out.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"{client.path}: HTTP {status} {content[:300]!r}")
    return out


def load(url: str, tokens: list[str], seconds: float, clients: int) -> tuple[int, int]:
    """``clients`` threads, each a different device (one device's requests serialise on its budget row)."""
    done = [0, 0]  # ok, failed
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(token: str):
        headers = {"Authorization": f"Device {token}", "X-Fleet-Task": "chat", "X-Fleet-Data-Class": "public"}
        ok = failed = 0
        client = KeepAliveClient(url, headers)
        try:
            while time.monotonic() < stop:
                status, _ = client.post()
                if status == 200:
                    ok += 1
                else:
                    failed += 1
        finally:
            client.close()
        with lock:
            done[0] += ok
            done[1] += failed

    threads = [threading.Thread(target=worker, args=(tokens[i % len(tokens)],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0], done[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()

    decide_figures = bench_decide()
    print(f"decide(): p50 {decide_figures['p50_us']:.2f} us, p99 {decide_figures['p99_us']:.2f} us (in-process)")

    database = start_database()
    processes = []
    try:
        tokens = prepare_platform(args.clients)
        upstream_port, web_port = test_services.free_port(), test_services.free_port()
        processes.append(
            subprocess.Popen([sys.executable, "-m", "tests.policies.upstream", str(upstream_port)], cwd=ROOT)
        )
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        env = os.environ | {
            "DATABASE_CONN_MAX_AGE": "600",
            "LLM_UPSTREAMS": json.dumps(
                [
                    {
                        "name": "loopback",
                        "base_url": upstream_url,
                        "api_key": "sk-bench",
                        "models": {"small": {"model": "m-small", "input_per_1k": 0.001, "output_per_1k": 0.002}},
                    }
                ]
            ),
        }
        processes.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "gunicorn"),
                    "fleet.wsgi",
                    "-b",
                    f"127.0.0.1:{web_port}",
                    "-w",
                    str(args.workers),
                    "-k",
                    "gthread",
                    "--threads",
                    str(args.threads),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
            )
        )
        wait_http(f"{upstream_url}/models")
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        gateway_url = f"http://127.0.0.1:{web_port}/v1/chat/completions"
        headers = {"Authorization": f"Device {tokens[0]}", "X-Fleet-Task": "chat", "X-Fleet-Data-Class": "public"}
        gateway = KeepAliveClient(gateway_url, headers)
        upstream = KeepAliveClient(f"{upstream_url}/chat/completions", {})
        latencies(gateway, 200)  # warm every worker's connections and caches
        latencies(upstream, 200)
        direct, through = [], []
        for _ in range(args.samples // 100):  # interleave so both see the same machine load
            direct += latencies(upstream, 100)
            through += latencies(gateway, 100)
        gateway.close()
        upstream.close()
        overhead_p50 = percentile(through, 0.5) - percentile(direct, 0.5)
        overhead_p99 = percentile(through, 0.99) - percentile(direct, 0.99)
        print(
            f"upstream direct: p50 {percentile(direct, 0.5):.2f} ms, p99 {percentile(direct, 0.99):.2f} ms; "
            f"through the gateway: p50 {percentile(through, 0.5):.2f} ms, p99 {percentile(through, 0.99):.2f} ms"
        )
        print(
            f"gateway overhead: p50 {overhead_p50:.2f} ms, p99 {overhead_p99:.2f} ms (mean direct "
            f"{statistics.mean(direct):.2f} ms)"
        )
        gunicorn, postmaster, upstream_pid = processes[1].pid, database.postmaster_pid(), processes[0].pid
        web_before, db_before = cpu_seconds(children(gunicorn)), cpu_seconds(children(postmaster))
        upstream_before, client_before = cpu_seconds([upstream_pid]), time.process_time()
        started = time.monotonic()
        ok, failed = load(gateway_url, tokens, args.seconds, args.clients)
        rps = ok / (time.monotonic() - started)
        per_request = 1000 / max(ok, 1)
        web_ms = cpu_spent(gunicorn, web_before) * per_request
        db_ms = cpu_spent(postmaster, db_before) * per_request
        upstream_ms = (cpu_seconds([upstream_pid])[upstream_pid] - upstream_before[upstream_pid]) * per_request
        client_ms = (time.process_time() - client_before) * per_request
        print(
            f"gateway throughput: {rps:.0f} requests/s ({ok} ok, {failed} failed, {args.clients} devices, "
            f"{args.workers} gunicorn workers x {args.threads} threads)"
        )
        print(
            f"CPU per gateway request: {web_ms:.2f} ms in gunicorn + {db_ms:.2f} ms in PostgreSQL; two idle cores "
            f"would give about {2000 / (web_ms + db_ms):.0f} requests/s for the platform's share "
            "(upstream and load generator not counted)"
        )
        print(
            f"CPU per request outside the platform, on the same cores: {upstream_ms:.2f} ms in the loopback upstream "
            f"+ {client_ms:.2f} ms in the load generator"
        )
        print(
            json.dumps(
                {
                    "bench": "policy",
                    "decide_p50_us": round(decide_figures["p50_us"], 2),
                    "decide_p99_us": round(decide_figures["p99_us"], 2),
                    "gateway_overhead_p50_ms": round(overhead_p50, 2),
                    "gateway_overhead_p99_ms": round(overhead_p99, 2),
                    "gateway_rps": round(rps, 1),
                    "gateway_cpu_ms_per_request": round(web_ms + db_ms, 2),
                }
            )
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        database.stop(mode="immediate")


if __name__ == "__main__":
    main()
