"""Bounds for running an ONNX file someone else made: its inputs' size, and each call's time.

An ONNX file is data, but it decides how much memory its inputs take (a 75-byte model can
declare a static 1x3x50000x50000 input: 30 GB once we build a feed for it) and how long a call
runs (a 300-byte Loop with a trip count of 10^15 never returns, and a Python signal handler
cannot run while the main thread is inside ``session.run``). So:

* ``check_inputs`` refuses, when the session opens, an input without a batch axis (unknown
  rank or a scalar) and one whose static dims alone exceed ``MAX_FEED_BYTES``;
  ``check_declared_dims`` one whose file declares a negative dimension;
  ``check_feed_size`` refuses a feed about to be allocated over the same limit;
* ``bounded_run`` runs one call in a worker thread (one long-lived thread per calling thread)
  while the calling thread waits, so SIGTERM
  and Ctrl-C are honoured during the call; past the limit (``call_limit``, from
  ``validate.max_call_s`` / ``profile.max_call_s``) or on a signal it sets ONNX Runtime's
  ``RunOptions.terminate``, which stops the run at its next node or loop iteration.
"""

from __future__ import annotations

import contextvars
import math
import queue
import threading
from contextlib import contextmanager

import numpy as np

from distill_export.errors import DataError

MAX_FEED_BYTES = 2 * 1024**3  # one batch of one input (or all inputs of a feed) above this is refused
DEFAULT_MAX_CALL_S = 60.0  # one session.run; validate.max_call_s and profile.max_call_s override it
TERMINATE_GRACE_S = 2.0  # after terminate, how long to wait for the run to return before giving up on it

_LIMIT = contextvars.ContextVar("onnx_max_call_s", default=DEFAULT_MAX_CALL_S)


@contextmanager
def call_limit(seconds: float):
    """Within the block, bounded_run stops a call after `seconds`."""
    token = _LIMIT.set(float(seconds))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def check_feed_size(path, name: str, shape, itemsize: int, declared=None) -> None:
    """Refuse before allocating a (batch, ...) array of `shape` above MAX_FEED_BYTES."""
    size = math.prod(int(d) for d in shape) * int(itemsize)
    if size > MAX_FEED_BYTES:
        raise DataError(f"{path}: input {name!r} of shape {list(declared or shape)} needs {_gb(size)} for one "
                        f"batch, above the limit of {_gb(MAX_FEED_BYTES)}; refused before allocating it")


def check_total_feed(path, batch: int, sizes: list[int]) -> None:
    if sum(sizes) > MAX_FEED_BYTES:
        raise DataError(f"{path}: its {len(sizes)} inputs need {_gb(sum(sizes))} for one batch of {batch}, above "
                        f"the limit of {_gb(MAX_FEED_BYTES)}; refused before allocating them")


_ITEMSIZE = {"tensor(double)": 8, "tensor(int64)": 8, "tensor(uint64)": 8, "tensor(float16)": 2,
             "tensor(bfloat16)": 2, "tensor(int16)": 2, "tensor(uint16)": 2, "tensor(int8)": 1,
             "tensor(uint8)": 1, "tensor(bool)": 1}


def check_inputs(session, path) -> None:
    """Every input has a batch axis, and its static dims (1 where dynamic) fit MAX_FEED_BYTES."""
    for inp in session.get_inputs():
        shape = list(inp.shape or [])
        if not shape:
            raise DataError(f"{path}: input {inp.name!r} has no shape in the graph (unknown rank) or is a "
                            "scalar; a model's input must be (batch, ...)")
        static = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
        check_feed_size(path, inp.name, static, _ITEMSIZE.get(inp.type, 4), declared=shape)


class _CallThread:
    """A long-lived daemon thread that runs one call at a time for its calling thread. Starting
    a thread per call costs 0.3-0.6 ms, 15-30x a small model's batch-1 call (validate makes
    one call per row at batch 1); a handoff through a queue costs a few microseconds."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="onnx-run", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call, result, done = self.jobs.get()
            try:
                result["out"] = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                result["error"] = exc
            finally:
                done.set()


_THREADS = threading.local()  # .runner: each calling thread's own _CallThread


def _call_thread() -> _CallThread:
    runner = getattr(_THREADS, "runner", None)
    if runner is None:
        runner = _THREADS.runner = _CallThread()
    return runner


def check_declared_dims(session, path) -> None:
    """Refuse an input whose file declares a negative dimension. ONNX Runtime reports such a dim
    as None, the same as an unnamed dynamic one, so only the file itself can tell them apart;
    it is read (without external data) only when some input has a None dim."""
    if not any(d is None for inp in session.get_inputs() for d in (inp.shape or [])):
        return
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - ONNX Runtime loaded it; the checks after this one still apply
        return
    fed = {inp.name for inp in session.get_inputs()}  # (old files also list initializers as inputs)
    for inp in (i for i in graph.input if i.name in fed):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in inp.type.tensor_type.shape.dim]
        for index, value in enumerate(dims):
            if isinstance(value, int) and value < 0:
                raise DataError(f"{path}: input {inp.name!r} declares dimension {index} as {value} {dims}: a "
                                "dimension is a size (0 or more) or dynamic, never negative, so the file is invalid")


def bounded_run(session, feed: dict[str, np.ndarray], path):
    """session.run(None, feed), stopped after the current call_limit or on SIGTERM / Ctrl-C."""
    limit = _LIMIT.get()
    options = _run_options(session)
    result: dict = {}
    done = threading.Event()
    call = ((lambda: session.run(None, feed, options)) if options is not None else (lambda: session.run(None, feed)))
    _call_thread().jobs.put((call, result, done))
    # Wait on an Event, not Thread.join: a signal handler raising inside join would mark the
    # thread finished while ONNX Runtime still runs it, and the process would abort at exit.
    try:
        finished = done.wait(limit)  # a signal interrupts the wait: its handler raises here
    except BaseException:
        _stop(done, options)
        raise
    if not finished:
        _stop(done, options)
        raise DataError(f"{path}: one ONNX Runtime call ran longer than the limit of {limit:g} s and was "
                        "stopped (a runaway loop?); raise validate.max_call_s / profile.max_call_s "
                        "(--max-call-s) if the model is really this slow")
    if "error" in result:
        exc = result["error"]
        if not isinstance(exc, Exception):
            raise exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: ONNX Runtime failed to run the model: {first[:300]}") from None
    return result["out"]


def _run_options(session):
    """RunOptions for an ONNX Runtime session; None for another (OpenVINO's wrapper): its call
    is still bounded in time, though it cannot be stopped."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if not isinstance(session, ort.InferenceSession):
        return None
    options = ort.RunOptions()
    options.log_severity_level = 4  # the terminate error is ours to report, in one line
    return options


def _stop(done: threading.Event, options) -> None:
    """Ask ONNX Runtime to stop the call. A call that does not stop is left to its daemon
    thread, and the next call of this thread gets a new one (it would queue behind it)."""
    if options is not None:
        options.terminate = True
    if not done.wait(TERMINATE_GRACE_S):
        _THREADS.runner = None
