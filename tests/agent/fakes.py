"""Test doubles for the *server* side of updates: a local update source that hands over files with known
sha256 (the real TUF round trip is tested with fleet_agent.uptane), and artifact builders."""

import hashlib
import io
import tarfile
import time
from pathlib import Path

from fleet_agent.updates import UpdateRejected, VerifiedUpdate


def make_artifact(
    folder: Path,
    *,
    name: str = "detector",
    version: str = "2.0.0",
    selftest: str | None = "exit 0",
    size: int = 64 * 1024,
) -> Path:
    """A tar.gz model artifact: ``model.bin`` (deterministic bytes) and, unless None, a ``selftest``
    shell script with the given body."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        weights = hashlib.sha256(f"{name}{version}".encode()).digest() * (size // 32)
        info = tarfile.TarInfo("model.bin")
        info.size = len(weights)
        archive.addfile(info, io.BytesIO(weights))
        if selftest is not None:
            script = f"#!/bin/sh\n{selftest}\n".encode()
            info = tarfile.TarInfo("selftest")
            info.size, info.mode = len(script), 0o755
            archive.addfile(info, io.BytesIO(script))
    path.write_bytes(buffer.getvalue())
    return path


def update_for(artifact: Path, *, name: str = "detector", version: str = "2.0.0", **overrides) -> VerifiedUpdate:
    content = artifact.read_bytes()
    fields = {
        "target": f"{name}/{version}/{artifact.name}",
        "length": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "name": name,
        "version": version,
        "release_counter": 2,
        "hardware": ("test-hw",),
    }
    return VerifiedUpdate(**(fields | overrides))


class LocalSource:
    """Serves one update from a local file; ``serve`` may differ from what ``update`` promises (tampering).
    Resumes a partial download like an HTTP range request would."""

    def __init__(
        self,
        update: VerifiedUpdate | None,
        serve: Path | None = None,
        *,
        chunk: int = 64 * 1024,
        delay_s: float = 0.0,
        reject: UpdateRejected | None = None,
    ):
        self.update, self.serve = update, serve
        self.chunk, self.delay_s = chunk, delay_s
        self.reject = reject
        self.downloads = 0

    def check(self) -> VerifiedUpdate | None:
        if self.reject:
            raise self.reject
        return self.update

    def download(self, update: VerifiedUpdate, dest: Path) -> None:
        self.downloads += 1
        offset = dest.stat().st_size if dest.exists() else 0
        with open(self.serve, "rb") as src, open(dest, "ab") as out:
            src.seek(offset)
            while block := src.read(self.chunk):
                out.write(block)
                out.flush()
                if self.delay_s:
                    time.sleep(self.delay_s)
