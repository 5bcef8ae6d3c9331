"""How every command fails: typed errors, OS errors (a full disk, a name too long), MemoryError
and JSON/YAML decode errors become `error: <one line>` and an exit code (2: bad input, 1: a
parity gate failed), never a traceback; SIGTERM is handled like Ctrl-C (exit 143, Ctrl-C 130)."""

from __future__ import annotations

import functools
import json
import re

import typer
import yaml
from rich.console import Console
from rich.text import Text

from distill_export.errors import DistillExportError
from distill_export import interrupts
from distill_export.interrupts import interruption_inside, raise_terminated

# Text as given: rich reads "[/]" or "[red]" in a path as markup (a MarkupError traceback, or a
# path printed wrong: eighteenth audit) and ":fire:" as an emoji (seventeenth audit B1).
err = Console(stderr=True, markup=False, emoji=False)
out = Console(markup=False, emoji=False)

_LONG_QUOTED = re.compile(r"'([^'\n]{%d,})'|\"([^\"\n]{%d,})\"" % (81, 81))
MAX_MESSAGE = 1000


def one_line(message: str) -> str:
    """The message on one line, quoted values cut to 80 characters, the whole to MAX_MESSAGE."""
    from distill_export.record.format import printable

    text = printable(" ".join(str(message).split()))  # ESC[2J from a class name cleared the terminal (D4)
    text = _LONG_QUOTED.sub(lambda m: (lambda q, v: f"{q}{v[:77]}...{q}")(m.group(0)[0], m.group(1) or m.group(2)), text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _os_error(exc: OSError) -> str:
    """ENOSPC, ENAMETOOLONG, EACCES, ...: what failed and on which file, in one line."""
    import errno

    name = exc.filename if exc.filename is not None else ""
    where = f" ({one_line(repr(str(name)))})" if name != "" else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space or choose another --out"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for the file system{where}"
    return f"{exc.strerror or type(exc).__name__}{where}"


# A library's advice to load a file unsafely (torch: "weights_only set to False", numpy: "the
# `allow_pickle=` keyword argument or `pickle.load()`") would run a hostile file's payload: the
# sentence that holds it, and what follows, is never printed, whichever message carried it
# (thirty-fifth audit B1; the loaders rewrite their own messages first, files.npz_failure).
_UNSAFE_ADVICE = re.compile(r"weights_only\s*(?:set\s*to|=)\s*False|allow_pickle|pickle\.load", re.IGNORECASE)


def without_unsafe_advice(message: str) -> str:
    hit = _UNSAFE_ADVICE.search(message)
    if hit is None:
        return message
    head = message[: hit.start()]
    # the advice's sentence starts after the last ". " or "(" before it
    cut = max(head.rfind(". ") + 2 if ". " in head else 0, head.rfind("(") + 1)
    kept = message[:cut].rstrip()
    return kept + ")" * max(kept.count("(") - kept.count(")"), 0)


def _fail(message: str, code: int):
    from distill_export import rank_errors

    message = without_unsafe_advice(message)
    if rank_errors.write(one_line(message), code):  # a rank of `run --nproc N`: its launcher prints it once
        raise typer.Exit(code)
    err.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_ALLOCATOR = re.compile(r"can't allocate memory|CUDA out of memory")


def _fail_for(exc: BaseException):
    """The one line and exit code for a failure a user can act on; anything else is re-raised (a bug)."""
    if isinstance(exc, DistillExportError):
        _fail(str(exc), exc.exit_code)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _ALLOCATOR.search(str(exc))):
        # torch's allocator raises RuntimeError ("DefaultCPUAllocator: can't allocate memory: you tried
        # to allocate 25594880256 bytes"): a traceback from profile at 3000x3000 (twenty-eighth audit B4)
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        what = f" (an allocation of {int(asked.group(1)) / 2**30:.1f} GiB failed)" if asked else ""
        _fail(f"out of memory{what}; try a smaller batch size, fewer rows (data.max_train_rows), a smaller "
              "--input-shape or a smaller model", 2)
    if isinstance(exc, json.JSONDecodeError):
        _fail(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", 2)
    if isinstance(exc, yaml.YAMLError):
        _fail(f"invalid YAML: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", 2)
    if isinstance(exc, OSError):
        _fail(_os_error(exc), 2)
    from distill_export.files import full_disk_inside

    if (full := full_disk_inside(exc)) is not None:  # a library's error raised over a full disk's
        _fail(_os_error(full), 2)
    raise exc


def guarded(fn):
    """The command `fn` with the failures above turned into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, SystemExit):
            raise
        except BaseException as exc:
            # A Ctrl-C or SIGTERM first: whether Python wrapped it (an import's __set_name__) or a
            # library swallowed it mid-import and something failed after (numpy half-imported:
            # "module 'numpy' has no attribute 'matrix'"), the user asked the command to stop.
            interruption = interruption_inside(exc) or interrupts.unreported()
            if interruption is not None:
                raise typer.Exit(interrupts.report(interruption)) from None
            _fail_for(exc)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
