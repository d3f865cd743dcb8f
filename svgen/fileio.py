"""Atomic file writes, the one way svgen writes a file that a reader or a re-run may see.

A file is written under a hidden temporary name beside its target and renamed over it, so a
reader sees the old file or the new one, never a partial one, and a killed writer leaves only a
``.*.tmp`` file. The temporary name is unique per writer (pid + random): a task orphaned by a
killed driver may still be writing the same target while a re-run writes it again.

Like ``svgen.config``, this module imports nothing from svgen, so ``data_prep`` may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator


def tmp_name(path: str | Path) -> Path:
    """A unique hidden temporary path beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent))


def write_lines(path: str | Path, lines: list[str]) -> Path:
    """One string per line (e.g. JSON Lines)."""
    return write_text(path, "".join(line + "\n" for line in lines))


def file_digest(path: str | Path, sync: bool = False) -> dict:
    """Size and SHA-256 of a file (read in 4 MiB blocks); ``sync`` also flushes it to disk."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}
