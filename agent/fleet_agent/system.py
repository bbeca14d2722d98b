"""Resource readings for heartbeats, from /proc and /sys (Linux); None or 0 where unavailable."""

import os
import shutil
from pathlib import Path


class CpuMeter:
    """CPU use of the whole machine between two readings of /proc/stat."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> float:
        now = self._read()
        last, self._last = self._last, now
        if not now or not last or now[0] == last[0]:
            return 0.0
        total, idle = now[0] - last[0], now[1] - last[1]
        return round(100.0 * (total - idle) / total, 1)


def mem_percent() -> float:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0])
        available = int(info["MemAvailable"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0.0
    return round(100.0 * (total - available) / total, 1) if total else 0.0


def disk_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return round(100.0 * usage.used / usage.total, 1) if usage.total else 0.0


def temperature_c() -> float | None:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def rss_mb(pid: int | None = None) -> float:
    try:
        for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0
