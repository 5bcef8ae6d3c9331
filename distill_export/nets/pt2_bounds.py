"""A per-call time limit for a user's torch.export program (.pt2), as ONNX files have one.

An exported program is data too, and its graph decides how long a call runs (a loop of large
matmuls unrolled into the graph). ONNX Runtime calls are stopped with RunOptions.terminate
(runtimes/onnx_bounds.py); a .pt2's graph runs as Python calling one aten operator after
another in this thread, so SIGALRM (``signal.setitimer``) interrupts it between two operators:
the handler raises, the call unwinds, and the caller gets one line naming the file and the
limit. The limit is the same setting: validate.max_call_s for a teacher in a run (``--teacher``),
profile.max_call_s (``--max-call-s``) for ``profile F.pt2``.

What it cannot do: cut short one operator that itself runs for minutes (the handler runs when
it returns), or bound a call outside the main thread (no SIGALRM there: the call runs unbounded,
as before). A timer someone else set is left alone (the call then runs unbounded too).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from distill_export.errors import CheckpointError

DEFAULT_MAX_CALL_S = 60.0  # validate.max_call_s and profile.max_call_s default to the same


class CallTooLong(CheckpointError):
    """A .pt2 call stopped at its time limit (the model, not the caller, is at fault)."""


class _Expired(BaseException):
    """Raised by the SIGALRM handler inside the call; a BaseException, so no `except Exception`
    in the program's or torch's code on the way out swallows it."""


@contextmanager
def time_limit(seconds: float | None, path):
    """Within the block, SIGALRM after `seconds` stops the call: CallTooLong naming `path`."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # someone else's alarm is pending: not ours to move
        yield
        return
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _Expired

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
        armed[0] = False
    except _Expired:
        raise CallTooLong(f"{path}: one call of the program ran longer than the limit of {seconds:g} s and was "
                          "stopped (a runaway loop?); raise validate.max_call_s / profile.max_call_s "
                          "(--max-call-s) if the model is really this slow") from None
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
