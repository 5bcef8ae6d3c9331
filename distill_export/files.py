"""Atomic file writes and hashing: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from distill_export.errors import ConfigError


def _write_failed(final: Path, exc: OSError) -> ConfigError:
    """One line naming the file a write was for: a full disk says so in words."""
    if exc.errno == errno.ENOSPC:
        return ConfigError(f"cannot write {final}: no space left on the device; free some space and run the "
                           "command again")
    return ConfigError(f"cannot write {final}: {exc.strerror or exc}")


def full_disk_inside(exc: BaseException) -> OSError | None:
    """The ENOSPC (or EDQUOT) OSError that `exc` is or that it was raised while handling
    (__cause__/__context__): torch.save on a full disk ends in torch's RuntimeError 'unexpected
    pos' from its zip writer, with the real cause underneath (twentieth audit B8)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if "[Errno 28] No space left on device" in str(exc):  # an exporter's C++ error keeps only the text (37th B4)
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it into place only on success."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise _write_failed(final, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        try:
            os.replace(tmp_path, final)
        except OSError as exc:  # a folder there: "Is a directory" named the temporary file (37th audit B3)
            raise _write_failed(final, exc) from None
    except Exception as exc:
        full = full_disk_inside(exc)  # torch's zip writer fails again in __exit__: RuntimeError over ENOSPC
        if full is None:
            raise
        raise _write_failed(final, full) from None  # the file named, not the temporary one (or none)
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


def npz_failure(exc: BaseException) -> str:
    """Why np.load failed, in words that never suggest unsafe loading: for bytes that are neither
    .npy nor .npz numpy assumes a pickle and says to load it with `allow_pickle=` or `pickle.load()`
    (thirty-fifth audit B1). No file of ours holds a pickle, so say what the file is not."""
    text = str(exc)
    if "Object arrays" in text:
        return "it holds object arrays (pickled Python objects), which are never loaded"
    if "pickle" in text.lower():
        return "it is not a NumPy .npy or .npz file"
    return (text.splitlines() or [""])[0][:200] or type(exc).__name__


MAX_MODEL_BYTES = 64 << 30  # a model file larger than this is not one of ours (a sparse or runaway file)
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else next((w for test, w in _NOT_REGULAR if test(mode)), "a special file")


def check_model_file(path: str | Path, name: str, error=ConfigError) -> Path:
    """A model path (.onnx, .pt2, --teacher, --student-init...) before any byte of it is read: a
    regular file (symlinks followed) of a sane size, else one `error` line "<name> ...". A FIFO would
    block the read, a device (a link to /dev/urandom) would be read without end, a directory is
    not a model: each is said as what it is, not "does not exist"."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{name} does not exist") from None
    except OSError as exc:  # a symlink loop, a permission denied on a folder above
        raise error(f"{name} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{name} is a directory, not a model file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{name} is not a regular file ({_kind(info.st_mode)})")
    if info.st_size == 0:
        raise error(f"{name} is empty (0 bytes)")
    if info.st_size > MAX_MODEL_BYTES:
        raise error(f"{name} is {info.st_size:,} bytes, more than the {MAX_MODEL_BYTES:,} a model file may be")
    return path


def unusable_path(text: str) -> str | None:
    """None when `text` can name a file here; else why not, in words. A NUL byte ends a name in
    every OS call (Python refuses it with a ValueError, not an OSError), and a character the
    file-system encoding cannot write (a lone surrogate) fails the same way: both are said once,
    where the path is read from a manifest cell or a config key, not as a traceback later."""
    if "\0" in text:
        return "contains a NUL byte, which no file name can"
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        return f"has a character ({text[exc.start]!r}) the file-system encoding cannot write"
    return None


def not_a_regular_file(path: str | Path, what: str) -> str | None:
    """None for a regular file (symlinks followed); else one line saying what `path` is instead:
    "<what> not found: P", "<what> P is a directory", "<what> P is not a regular file (a FIFO)".
    A data cell naming a FIFO or a device must not be read (it blocks or never ends), and must
    not be called missing either."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{what} not found: {path}"
    except OSError:  # a name too long, a loop of links: the caller's OSError handling names the row
        raise
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"{what} {path} is a directory"
    return f"{what} {path} is not a regular file ({_kind(mode)})"


def read_regular(path: str | Path, what: str = "", limit: int = -1) -> bytes:
    """The bytes of a regular file (symlinks followed; at most `limit`), else one ConfigError line
    "<what or path> is not a regular file (a FIFO)". Opened without blocking and checked on the open
    descriptor: a FIFO as --config or state.json blocked the open for ever (thirty-fifth audit B5,
    B6), a device never ends. A missing file is the OSError open() raises, as before."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO with no writer: open returns at once
    mode = os.fstat(fd).st_mode  # before fdopen, which refuses a folder as "Is a directory: 4" (36th B3)
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigError(f"{what or path} is not a regular file ({_kind(mode)})")
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def refuse_special(path: Path) -> None:
    """A run file that is there but is not a regular file (a FIFO, a folder) is said as what it is,
    not as missing (thirty-sixth audit B1, B2): ConfigError "P is not a regular file (a FIFO)"."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or unreadable: the caller's own check names it
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path} is not a regular file ({_kind(mode)})")


# A run's own files, by suffix: one that is a FIFO, a folder or a device was read as "missing" or
# failed in os.replace naming a temporary file (thirty-sixth audit B1-B3, thirty-seventh B1-B3).
_RUN_FILE_SUFFIXES = (".json", ".yaml", ".pt", ".pt2", ".onnx", ".npz", ".csv", ".md", ".html", ".engine", ".xml",
                      ".bin", ".data")


def refuse_special_run_files(run: Path) -> None:
    """Every file of a run folder (by its suffix) that is there but is not a regular file, refused
    in one line naming it, before a command reads or replaces any of them (refuse_special)."""
    if not run.is_dir():
        return
    for entry in sorted(run.iterdir()):
        if entry.suffix.lower() in _RUN_FILE_SUFFIXES and not entry.name.startswith("."):
            refuse_special(entry)


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


def own_folder(path: str | Path) -> Path:
    """A folder inside a run that the run writes into (plots/): refused when it is a symbolic link,
    which would send the run's files into (and over) a folder of the user's."""
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)[:120]}); the run writes its files there "
                          "only into a folder of its own: remove the link and run the command again")
    if path.exists() and not path.is_dir():  # a FIFO or a file: "File exists" named the plot (35th audit A2)
        raise ConfigError(f"{path} is not a folder; the run writes its files into a folder there: remove it and run "
                          "the command again")
    return path
