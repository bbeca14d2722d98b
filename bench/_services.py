"""A throwaway PostgreSQL for benchmarks and scripts/topology.py, tuned for speed rather than safety.

It builds on tests/processes.py (the launchers the test suite uses too): a free loopback port, a
temporary folder that ``stop()`` removes, and a database named ``fleet``.
"""

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.processes import PostgresServer, free_port, wait_for_port

__all__ = ["BenchPostgres", "free_port", "wait_for_port"]

# Commits return before the WAL flush (a crash may lose the last few ms, never corrupts); the figures
# measure the platform, not this machine's disk.
BENCH_POSTGRES_SETTINGS = (
    "-c max_connections=100 -c shared_buffers=512MB -c work_mem=16MB -c maintenance_work_mem=256MB "
    "-c synchronous_commit=off"
)


@dataclass
class BenchPostgres:
    root: Path
    server: PostgresServer

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, database: str = "fleet") -> str:
        return self.server.url(database)

    @classmethod
    def start(cls) -> "BenchPostgres":
        root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
        root.chmod(0o755)
        server = PostgresServer.create(data_dir=root / "pgdata", port=free_port(), settings=BENCH_POSTGRES_SETTINGS)
        server.create_database("fleet")
        return cls(root=root, server=server)

    def postmaster_pid(self) -> int:
        return self.server.postmaster_pid()

    def stop(self) -> None:
        self.server.stop(mode="immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
