"""Server processes from the system's binaries, with no side effects at import: the pieces shared by the
test plugin (tests/services.py), the benchmarks (bench/_services.py) and scripts/topology.py.

PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user on a data directory that
user owns.
"""

import glob
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_USER = "fleet"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds so far) of a process, from /proc (Linux); OSError once it
    is gone. The benchmarks report CPU per request from it: steadier than wall time on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = [*sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")), f"/usr/sbin/{name}", f"/usr/bin/{name}"]
    for candidate in reversed(candidates):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed; run `make test`, which installs the system packages it needs")


def as_service_user(user: str, argv: list[str]) -> list[str]:
    """Run argv as ``user`` when we are root (servers that refuse root), else as ourselves."""
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return argv


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in ``data_dir`` on ``port``; ``settings`` are extra ``-c`` server options."""

    data_dir: Path
    port: int
    settings: str = ""
    user: str = PG_USER

    @classmethod
    def create(cls, *, data_dir: Path, port: int, settings: str = "") -> "PostgresServer":
        """initdb a new cluster (trust auth, superuser ``fleet``) and start it."""
        data_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(data_dir, "postgres", "postgres")
        subprocess.run(
            as_service_user(
                "postgres",
                [find_binary("initdb"), "-D", str(data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        server = cls(data_dir=data_dir, port=port, settings=settings)
        server.start()
        return server

    def url(self, database: str) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            as_service_user("postgres", [find_binary("pg_ctl"), "-D", str(self.data_dir), *args]),
            check=check,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} {self.settings}"
        self._pg_ctl("-o", options, "-l", str(self.data_dir / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast", *, check: bool = True) -> None:
        self._pg_ctl("-m", mode, "-w", "stop", check=check)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> None:
        subprocess.run(
            as_service_user(
                "postgres", [find_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name]
            ),
            check=True,
        )

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
