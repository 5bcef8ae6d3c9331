"""Atomic file writes and hashing: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from distill_export.errors import ConfigError


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it into place only on success."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {final}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save(obj, path: str | Path) -> None:
    """torch.save(obj) to `path` atomically, through an open file: torch then names the zip's
    record folder "archive" instead of after the (random) temporary file, so the same object
    always gives the same bytes. Files saved by path before load the same (any folder name)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Archive members that differ between two saves of the same model: torch.save's per-save id, and
# the example inputs a torch.export program carries (they do not change what it computes).
_VOLATILE_MEMBERS = (".data/serialization_id", "data/sample_inputs/")


def torch_archive_hash(path: str | Path) -> str:
    """Content hash of a torch.save (.pt) or torch.export (.pt2) archive: sha256 over its members'
    names and bytes, with the top-level record folder dropped from each name (torch.save names it
    after the file, so the same model saved to a.pt and b.pt differs there) and the volatile members
    skipped. A file that is not a zip archive (a legacy or foreign format) hashes by its bytes."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return sha256_file(path)
    h = hashlib.sha256()
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename.partition("/")[2]):
            name = info.filename.partition("/")[2]
            if info.is_dir() or name.startswith(_VOLATILE_MEMBERS):
                continue
            h.update(f"{name}|{info.file_size}|".encode())
            with archive.open(info) as member:
                for chunk in iter(lambda: member.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def ensure_writable_dir(path: str | Path) -> Path:
    """Create the run directory or fail with one line naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {path} cannot be written: {exc.strerror or exc}") from None
    return path
