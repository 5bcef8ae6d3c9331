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
from rich.markup import escape

from distill_export.errors import DistillExportError

err = Console(stderr=True)
out = Console()

_LONG_QUOTED = re.compile(r"'([^'\n]{%d,})'|\"([^\"\n]{%d,})\"" % (81, 81))
MAX_MESSAGE = 1000


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C, so the same cleanup runs."""


def one_line(message: str) -> str:
    """The message on one line, quoted values cut to 80 characters, the whole to MAX_MESSAGE."""
    text = " ".join(str(message).split())
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


def _fail(message: str, code: int):
    from distill_export import rank_errors

    if rank_errors.write(one_line(message), code):  # a rank of `run --nproc N`: its launcher prints it once
        raise typer.Exit(code)
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet_in_rank() -> bool:
    """True in a rank of `run --nproc N`: torchrun stops the other ranks with SIGTERM when one
    fails, and the launcher says why in one line."""
    from distill_export import rank_errors

    return rank_errors.collecting()


def _on_sigterm(signum, frame):
    raise Terminated()


def _interruption_inside(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM that `exc` wraps, if any. Python wraps an exception raised in some
    places in another: SIGTERM during an import that runs `__set_name__` (torch._dynamo does)
    surfaces as "RuntimeError: Error calling __set_name__", with the Terminated as its cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _stop(interruption: BaseException):
    if isinstance(interruption, Terminated):
        _quiet_in_rank() or err.print("terminated (SIGTERM)")
        raise typer.Exit(143) from None
    _quiet_in_rank() or err.print("interrupted")
    raise typer.Exit(130) from None


def guarded(fn):
    """The command `fn` with the failures above turned into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except DistillExportError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:  # Terminated (SIGTERM) is one
            _stop(exc)
        except MemoryError:
            _fail("out of memory; try a smaller batch size, fewer rows (data.max_train_rows) or a smaller model", 2)
        except json.JSONDecodeError as exc:
            _fail(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", 2)
        except yaml.YAMLError as exc:
            _fail(f"invalid YAML: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", 2)
        except OSError as exc:
            _fail(_os_error(exc), 2)
        except Exception as exc:
            interruption = _interruption_inside(exc)
            if interruption is None:
                raise
            _stop(interruption)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
