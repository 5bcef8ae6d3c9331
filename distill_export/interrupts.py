"""Ctrl-C and SIGTERM as exceptions. SIGTERM is raised where the program is, like Ctrl-C's
KeyboardInterrupt, so the same cleanup runs; both end in one line and exit 130 or 143, printed
by cli/guard.py during a command and by entry.py while the CLI is still importing.

No torch, typer or rich here: entry.py installs the handler before those imports (seconds on a cold
disk), so a signal in that window is one line too."""

from __future__ import annotations

import re
import sys

from distill_export import rank_errors


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is."""


# The interruptions raised and not yet reported. Typer turns a KeyboardInterrupt raised while it
# parses (before a command's guard runs) into a silent exit 130, SIGTERM included; the console
# script reads this afterwards to print the line and use the signal's own code.
_unreported: list[KeyboardInterrupt] = []


def raise_terminated(signum, frame):
    """The SIGTERM handler."""
    _signalled.append(True)
    _unreported.append(Terminated())
    raise _unreported[-1]


def raise_interrupted(signum, frame):
    """The SIGINT handler: Python's own (KeyboardInterrupt), remembered like SIGTERM."""
    _signalled.append(True)
    _unreported.append(KeyboardInterrupt())
    raise _unreported[-1]


def install() -> None:
    """Both handlers, in the main thread; a SIGINT the parent ignores (nohup, a background job) stays ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupted)
    if not getattr(sys.unraisablehook, "_keeps_interruptions", False):
        sys.unraisablehook = _quiet_about_interruptions(sys.unraisablehook)
    if not getattr(sys.excepthook, "_keeps_interruptions", False):
        sys.excepthook = _quiet_about_killed_workers(sys.excepthook)


_signalled: list[bool] = []  # a Ctrl-C or SIGTERM reached this process (reported or not)


def _quiet_about_killed_workers(previous):
    """SIGTERM sent to a `--nproc` rank's process group kills its DataLoader workers too; torch's
    SIGCHLD handler then raises "DataLoader worker (pid N) is killed by signal: Terminated" inside
    a weakref finalizer at exit, which Python hands to sys.excepthook: an 11-line traceback per rank
    before the one line (72nd audit B2). After a signal, that error is the signal's, already said."""
    def hook(kind, value, tb):
        if _signalled and _WORKER_KILLED.search(str(value)):
            return
        previous(kind, value, tb)

    hook._keeps_interruptions = True
    return hook


def _quiet_about_interruptions(previous):
    """A signal whose handler runs inside a __del__ or a weakref callback (torch's) raises where
    Python can only print it: "Exception ignored in ..." and a 6-line traceback, and the command
    went on (66th audit B3). The interruption is in _unreported, so raise_pending stops the command
    at its next safe point; only other unraisable errors are printed."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and unraisable.exc_value in _unreported:
            return
        previous(unraisable)

    hook._keeps_interruptions = True
    return hook


class deferred:
    """Hold Ctrl-C and SIGTERM for a few writes that must land together (report.json and its
    digest in state.json), then raise the first one that came. Outside the main thread, or where
    the handlers are not the product's, it holds nothing."""

    def __enter__(self):
        import signal
        import threading

        self._held: list[int] = []
        self._before = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) in (raise_terminated, raise_interrupted, signal.default_int_handler):
                self._before[sig] = signal.signal(sig, lambda signum, frame: self._held.append(signum))
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        if self._held:  # the first signal that came, as its own handler would have raised it
            self._before[self._held[0]](self._held[0], None)


def report(interruption: KeyboardInterrupt) -> int:
    """Print its one line (none in a rank of `run --nproc N`: the launcher says why, once) and
    mark every interruption so far reported; returns the exit code."""
    line, code = line_and_code(interruption)
    if not rank_errors.collecting():
        print(line, file=sys.stderr, flush=True)
    reported_all()
    return code


def reported_all() -> None:
    """Forget the interruptions raised so far (reported, or handled by whoever caught them)."""
    _unreported.clear()


def raise_pending() -> None:
    """Raise again a Ctrl-C or SIGTERM that something swallowed (a library's broad except, a
    __del__): called at safe points (each training epoch, each stage's start and end), so the
    command still stops soon. CI
    once saw a SIGTERM land early in `run` and the run finish its every stage before exit 143."""
    if _unreported:
        raise _unreported[0]


def unreported() -> KeyboardInterrupt | None:
    """The first interruption raised since the last report, if any."""
    return _unreported[0] if _unreported else None


def interruption_inside(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `exc` is or wraps, if any. Python wraps an exception raised in
    some places: SIGTERM during an import that runs `__set_name__` (torch._dynamo's does) surfaces
    as "RuntimeError: Error calling __set_name__" with the Terminated as its cause, and click turns
    Ctrl-C while it parses into Abort, with the KeyboardInterrupt as its cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if isinstance(exc, RuntimeError) and (killed := _WORKER_KILLED.search(str(exc))):
            return Terminated() if killed.group(1) == "Terminated" else KeyboardInterrupt()
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# torch's DataLoader turns the death of a worker into this RuntimeError (its SIGCHLD handler), and a
# signal sent to the whole process group (torchrun passing SIGTERM on to its ranks) can reach the
# worker before its rank: it is then the user's SIGTERM or Ctrl-C, not a crash (twenty-first audit B6).
_WORKER_KILLED = re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: (Terminated|Interrupt)")


def line_and_code(interruption: KeyboardInterrupt) -> tuple[str, int]:
    """What the user sees and the exit code: 143 = 128 + SIGTERM, 130 = 128 + SIGINT, as a shell reports."""
    if isinstance(interruption, Terminated):
        return "terminated (SIGTERM)", 143
    return "interrupted", 130
