"""What keeps a run directory whole while a command works in it: an exclusive lock (a second
command on the same run is refused) and a transaction (a failed stage command leaves the
directory as it was). A mixin of RunDir (rundir.py)."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from distill_export.errors import ConfigError
from distill_export.stage_graph import BACKUP_DIR


def _read_only(path: Path) -> bool:
    """A folder on a file system mounted read-only (os.access says writable for root there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (not POSIX): the write itself will say
        return False


# files.atomic_path's temporary files: ".<final name>.<8 random characters>.tmp"
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _remove_temporary_files(run: Path) -> None:
    """A process killed inside an atomic write leaves its temporary file; under the run's lock no
    other write is under way, so one found now is a dead process's (never a final name)."""
    for folder, dirs, files in os.walk(run):  # links to folders are not followed: only the run's own
        dirs[:] = [d for d in dirs if d != BACKUP_DIR]
        for name in files:
            path = Path(folder) / name
            if _TEMPORARY.match(name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)


class RunGuard:
    @contextmanager
    def lock(self):
        """Hold an exclusive lock on the run directory while a command works in it (`run` and
        every stage command), so a second command on the same run is refused, not interleaved
        (the lock dies with the process)."""
        if not os.access(self.path, os.W_OK) or _read_only(self.path):  # was "Read-only file system
            # ('RUN/.stage-backup')", or tune's after its cache pass (thirty-seventh A4, thirty-eighth A8)
            raise ConfigError(f"{self.path} cannot be written (a read-only folder or file system); a stage command "
                              "writes its results into the run directory")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield self
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ConfigError(f"{self.path} is in use by another distill-export process (another command "
                                  "holds the run's lock); wait for it to finish or stop it first") from None
            # a backup only lives inside a transaction, under this lock: one found now is a killed
            # stage's, which `run --resume` (no transaction) left behind (65th audit A1)
            shutil.rmtree(Path(self.path) / BACKUP_DIR, ignore_errors=True)
            _remove_temporary_files(Path(self.path))  # and its half-written files (69th audit A1)
            yield self
        finally:
            os.close(fd)

    @contextmanager
    def transaction(self):
        """Run a stage command so that, if it fails, the directory is left exactly as it was:
        every file is hard-linked aside first (writes here are atomic renames, so the links keep
        the old contents); on an error the files are put back and the ones the stage added are
        removed. Ctrl-C/SIGTERM keep what the stage wrote (a later resume may want it)."""
        backup = self.path / BACKUP_DIR
        shutil.rmtree(backup, ignore_errors=True)  # left by a stage that was killed
        before = self._files()
        dirs_before = {p for p in self.path.rglob("*") if p.is_dir() and BACKUP_DIR not in p.parts}
        for rel in before:
            dst = backup / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.path / rel, dst)
            except OSError:
                shutil.copy2(self.path / rel, dst)
        try:
            yield self
        except Exception:
            for rel in self._files() - before:
                (self.path / rel).unlink(missing_ok=True)
            for rel in before:
                os.replace(backup / rel, self.path / rel)
            added = {p for p in self.path.rglob("*") if p.is_dir() and BACKUP_DIR not in p.parts} - dirs_before
            for d in sorted(added, key=lambda p: len(p.parts), reverse=True):
                shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(backup, ignore_errors=True)

    def _files(self) -> set[Path]:
        return {p.relative_to(self.path) for p in self.path.rglob("*")
                if (p.is_file() or p.is_symlink()) and BACKUP_DIR not in p.relative_to(self.path).parts}
