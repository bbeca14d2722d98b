"""A throwaway PostgreSQL for benchmarks (the test suite's own lives in tests/services.py).

Started from the binaries on PATH (or Debian's /usr/lib/postgresql/*/bin) on a free loopback port, in a
temporary folder that ``stop()`` removes. As root it runs as the ``postgres`` user (it refuses root).
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_USER = "fleet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed (apt-get install postgresql)")


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class BenchPostgres:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    def url(self, database: str = "fleet") -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls) -> "BenchPostgres":
        root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
        root.chmod(0o755)
        server = cls(root=root, port=free_port())
        server.data_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(server.data_dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    *(find_binary("initdb"), "-D", str(server.data_dir), "-U", PG_USER),
                    *("--auth=trust", "-E", "UTF8", "--no-sync"),
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = (
            f"-p {server.port} -c listen_addresses=127.0.0.1 -k {server.data_dir} -c max_connections=100 "
            "-c shared_buffers=512MB -c work_mem=16MB -c maintenance_work_mem=256MB "
            # Commits return before the WAL flush (a crash may lose the last few ms, never corrupts); the
            # figures measure the platform, not this machine's disk.
            "-c synchronous_commit=off"
        )
        subprocess.run(
            _as_postgres(
                [
                    *(find_binary("pg_ctl"), "-D", str(server.data_dir), "-o", options),
                    *("-l", str(server.data_dir / "server.log"), "-w", "-t", "60", "start"),
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            _as_postgres([find_binary("createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", PG_USER, "fleet"]),
            check=True,
        )
        return server

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([find_binary("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]),
            stdout=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
