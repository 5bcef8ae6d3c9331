"""Where a command is told to write (--out, tune --out, profile --out, the tools' --out): one rule
for every command and tool, checked before any work; and the folders a failed command empties
again, so that the same command can run again."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from distill_export.errors import ConfigError


# ----- output paths: one rule for every command and tool that writes where it is told ----------
# A run directory holds state.json, or report.json beside config.yaml (rundir.py's layout).
def is_run_dir(path: Path) -> bool:
    return (path / "state.json").is_file() or ((path / "report.json").is_file() and (path / "config.yaml").is_file())


def _enclosing_run(target: Path) -> Path | None:
    """The run directory `target` lies inside (itself excluded), or None."""
    resolved = target.resolve()
    return next((p for p in resolved.parents if is_run_dir(p)), None)


def check_output(path: str | Path, *, folder: bool, flag: str = "--out", run_dir: str | Path | None = None,
                 resume_hint: bool = True) -> Path:
    """Where a command is told to write, checked before any work, the same way for every command:
    a file (folder=False) must be new, in a folder that exists; a folder (folder=True) must be new
    or empty (its missing parents are made). Neither may lie inside a run directory (`run_dir`, or
    any folder holding a run), whose files belong to its stages. A user's file or folder is never
    overwritten; a dangling symbolic link (it would write through to its target) counts as a file.
    Returns the path, `~` expanded."""
    target = Path(path).expanduser()
    if not folder and _names_a_folder(str(path)):  # Path() drops a final `/` or `/.`: `newdir/` became a file
        raise ConfigError(f"{flag} '{path}' names a folder (it ends in '/' or '.', or is empty), and {flag} is a "
                          f"file; give the file's name, e.g. {os.path.join(os.path.normpath(str(path) or '.'), 'NAME')}")
    if folder:
        _check_free_folder(target, flag, resume_hint)
    elif target.exists() or target.is_symlink():
        raise ConfigError(f"{flag} {target} already exists and is never overwritten; choose a new path")
    inside = None
    if run_dir is not None and target.resolve().is_relative_to(Path(run_dir).expanduser().resolve()):
        inside = Path(run_dir)
    inside = inside or _enclosing_run(target)
    if inside is not None:
        raise ConfigError(f"{flag} {target} is inside the run directory {inside}, whose files belong to its stages; "
                          f"choose a path outside it")
    if not folder and not target.parent.is_dir():
        blocked = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:  # 49th audit O1: a file on the way was said to be a missing folder
            raise ConfigError(f"{flag} {target}: {blocked} is a file, not a folder; choose another {flag}")
        raise ConfigError(f"{flag} {target}: the folder {target.parent} does not exist")
    return target


def _names_a_folder(text: str) -> bool:
    """`DIR/`, `DIR/.`, `DIR/..`, `.` or empty: a spelling of a folder, never of a file's name."""
    return text == "" or text.endswith(("/", os.sep)) or os.path.basename(text) in (".", "..")


def check_free(path: str | Path | None) -> None:
    """run's --out, cheap, before any data loads (RunDir's claim repeats it, atomically): new, or an
    empty folder; never a run, never a folder of the user's files, never inside a run."""
    if path is not None:
        check_output(Path(path), folder=True)


def check_new_file(path: str | Path, run_dir: str | Path, flag: str = "--out") -> None:
    """An output file a command is told to write (tune --out): a new path in an existing folder,
    outside the run directory (whose files belong to its stages), checked before any work."""
    check_output(path, folder=False, flag=flag, run_dir=run_dir)


def check_tool_output(path: str | Path, *, folder: bool, flag: str = "--out", remove_on_failure: bool = False) -> Path:
    """check_output for the scripts under tools/: a refusal is `error: <one line>` on stderr and
    exit 2, before the script does any work. remove_on_failure (the data generators): if the tool
    then fails, toolargs.one_line_errors removes what it wrote into the folder (remove_partial)."""
    import sys

    try:
        target = check_output(path, folder=folder, flag=flag, resume_hint=False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if folder and remove_on_failure:
        _PARTIAL.append((target, _entries(target)))
    return target


# --out folders (new, or empty when checked) whose contents a failed command removes again: a full
# disk left half a dataset, or profile.json without profile.html, and the same command run again was
# then refused as "not empty" (thirty-seventh audit B5, B6).
_PARTIAL: list[tuple[Path, set[str] | None]] = []


def remove_partial() -> None:
    """Remove what was written into the registered --out folders (check_tool_output)."""
    while _PARTIAL:
        _remove_new(*_PARTIAL.pop())


def _remove_new(folder: Path, before: set[str] | None) -> None:
    """The folder itself when the command made it (before is None), else every entry it did not hold."""
    import shutil

    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name not in before:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _entries(folder: Path) -> set[str] | None:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else None


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[Path]:
    """`folder` (checked new or empty) for a command to fill; if the command fails, what it wrote is
    removed, so the same command can run again."""
    before = _entries(folder)
    try:
        yield folder
    except BaseException:
        _remove_new(folder, before)
        raise


def _check_free_folder(target: Path, flag: str, resume_hint: bool = True) -> None:
    """A folder to write into: new, or empty; never a run, never a folder of the user's files."""
    if not target.exists():
        if target.is_symlink():
            raise ConfigError(f"{flag} {target} is a dangling symbolic link; choose another {flag}")
        # its missing parents are made: one that is a file is said now, not after the work (48th audit T1)
        blocked = next((p for p in target.parents if (p.exists() or p.is_symlink()) and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"{flag} {target}: {blocked} is a file, not a folder, so the folder cannot be made; "
                              f"choose another {flag}")
        return
    if not target.is_dir():
        raise ConfigError(f"{flag} {target} is a file, not a folder; choose another {flag}")
    names = sorted(p.name for p in target.iterdir())
    if is_run_dir(target):
        # `run --resume` is advice for `run`'s own --out, not for a tool's (thirty-fifth audit A5)
        resume = f" (an interrupted run continues with `distill-export run --resume {target}`)" if resume_hint else ""
        raise ConfigError(f"{flag} {target} already holds a run; choose a new {flag} or delete it{resume}")
    if {"report.json", "state.json"} & set(names):  # a run claimed the folder and stopped before its config
        raise ConfigError(f"{flag} {target} holds the start of a run that never wrote its config.yaml; delete it "
                          f"or choose a new {flag}")
    if names:
        shown = ", ".join(repr(n[:40]) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"{flag} {target} is not empty and is not a run directory ({len(names)} entries: {shown}); "
                          f"it is written only when new or empty, so nothing in it is overwritten: choose another {flag}")


def check_cache_dir(folder: str | None) -> None:
    """distill.teacher_cache_dir must be a folder or a path one can be made at: a file there (or
    above it) is refused now, not after the teacher trained, when the cache is first written."""
    if folder is not None and not str(folder).strip():  # 74th audit A3: "" was recorded, the run's own cache used
        raise ConfigError("distill.teacher_cache_dir is empty; give a folder, or leave it unset (null) to cache "
                          "inside the run directory")
    if not folder:
        return
    path = Path(folder).expanduser()
    # the path as written and as resolved: a link to another run's cache led into it (74th audit B1)
    candidates = [path, *path.parents, path.resolve(), *path.resolve().parents]
    if run := next((at for at in candidates if at.is_dir() and is_run_dir(at)), None):  # 72nd B3, A5
        raise ConfigError(f"distill.teacher_cache_dir {folder} is inside the run directory {run}, whose folders are "
                          "its own; give a folder outside every run (or leave it unset to cache inside this run)")
    for at in (path, *path.parents):
        if at.is_dir():
            return
        if at.exists() or at.is_symlink():
            raise ConfigError(f"distill.teacher_cache_dir {folder}: {at} is not a folder; give a folder "
                              f"(it is made if missing) or leave it unset to cache inside the run directory")
