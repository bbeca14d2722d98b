"""The A/B model slots: two directories and an atomically replaced ``current`` symlink.

    models/
      slots/a/  slots/b/      one release each: ``artifact`` (the verified download),
                              ``content/`` (unpacked, when the artifact is a tar archive),
                              ``manifest.json`` (written last: a slot without it is empty/incomplete)
      current -> slots/a      the active slot; replaced by rename, directory fsync'd
      journal.json            the update in progress (updates.py), absent when idle
      download/               partial downloads, kept across restarts to resume

A slot is *verified* when its manifest exists and the artifact's length and sha256 match it. The agent
checks that at every start; a slot that fails is never made active.
"""

import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fleet_agent.fsutil import atomic_write_json, fsync_dir, fsync_tree, read_json, replace_symlink

SLOTS = ("a", "b")
CHUNK = 1024 * 1024


def file_digest(path: Path, *, limit: int | None = None) -> tuple[int, str]:
    """(length, sha256 hex) of a file, reading at most ``limit + 1`` bytes (so an oversized file is
    detected without hashing all of it)."""
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            length += n
            if limit is not None and length > limit:
                break
    return length, digest.hexdigest()


@dataclass(frozen=True)
class SlotInfo:
    slot: str
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest.get("name", "")

    @property
    def version(self) -> str:
        return self.manifest.get("version", "")

    @property
    def model_path(self) -> Path:
        """The file or folder the application loads."""
        content = self.path / "content"
        return content if content.is_dir() else self.path / "artifact"


class SlotStore:
    def __init__(self, root: Path):
        self.root = root
        self.slots_dir = root / "slots"
        self.current_link = root / "current"
        self.download_dir = root / "download"
        for folder in (self.root, self.slots_dir, self.download_dir, *(self.slots_dir / s for s in SLOTS)):
            folder.mkdir(parents=True, exist_ok=True)

    def slot_path(self, slot: str) -> Path:
        return self.slots_dir / slot

    def active_slot(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        slot = Path(target).name
        return slot if slot in SLOTS else None

    def inactive_slot(self) -> str:
        return "b" if self.active_slot() == "a" else "a"

    def manifest(self, slot: str) -> dict | None:
        return read_json(self.slot_path(slot) / "manifest.json")

    def info(self, slot: str | None) -> SlotInfo | None:
        if slot is None:
            return None
        manifest = self.manifest(slot)
        return SlotInfo(slot, self.slot_path(slot), manifest) if manifest else None

    def active(self) -> SlotInfo | None:
        return self.info(self.active_slot())

    def verify(self, slot: str) -> bool:
        """The slot holds a complete release whose artifact still has the length and hash it was
        installed with."""
        manifest = self.manifest(slot)
        artifact = self.slot_path(slot) / "artifact"
        if not manifest or not artifact.is_file():
            return False
        length, sha256 = file_digest(artifact, limit=manifest["length"])
        return length == manifest["length"] and sha256 == manifest["sha256"]

    def install(self, slot: str, artifact: Path, manifest: dict) -> SlotInfo:
        """Move a verified artifact into ``slot`` (which must not be active), unpack it if it is a tar
        archive, fsync everything, and write the manifest last."""
        if slot == self.active_slot():
            raise ValueError("refusing to install into the active slot")
        path = self.slot_path(slot)
        # Invalidate first: if we die below, the slot has no manifest and is never chosen.
        try:
            (path / "manifest.json").unlink()
            fsync_dir(path)
        except FileNotFoundError:
            pass
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        os.replace(artifact, path / "artifact")
        if tarfile.is_tarfile(path / "artifact"):
            with tarfile.open(path / "artifact") as archive:
                archive.extractall(path / "content", filter="data")
        fsync_tree(path)
        fsync_dir(self.slots_dir)
        atomic_write_json(path / "manifest.json", manifest)
        return SlotInfo(slot, path, manifest)

    def switch(self, slot: str) -> None:
        replace_symlink(self.current_link, f"slots/{slot}")

    def describe(self) -> dict:
        active = self.active()
        return {
            "slot": active.slot if active else None,
            "name": active.name if active else None,
            "version": active.version if active else None,
        }


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, sort_keys=True)
