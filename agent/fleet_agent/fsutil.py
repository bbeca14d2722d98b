"""Durable file operations: what survives a power cut is either the old content or the new, never half.

The pattern everywhere: write a temporary file next to the target, fsync it, rename it over the target,
fsync the directory (the rename itself lives in the directory's metadata).
"""

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, content: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing tmp file keeps its old mode otherwise
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode(), mode)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return default


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a rename of a fresh symlink), durably."""
    tmp = link.with_name(f".{link.name}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below root (after unpacking into a slot)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
