"""How the fused KD kernel's tests run it: natively on CUDA, or under Triton's interpreter on CPU.

* No CUDA: under Triton's interpreter, on CPU tensors. Triton decides interpreted-vs-compiled
  for every ``@triton.jit`` function when it is decorated, reading TRITON_INTERPRET at that
  moment; that includes triton's own ``tl.max``/``tl.sum``, decorated when ``triton`` is first
  imported. So:
  - if triton is not imported yet (the usual case: torch does not import it), this module
    sets TRITON_INTERPRET=1, imports ``kd_kernels`` (and triton with it) and ``kd_triton``,
    and restores the variable; the ``interpret_env`` fixture sets it again for each test, so
    other test modules never see it (kd.py refuses impl="fused" on CPU without it, and tests
    elsewhere may check that);
  - if something imported triton *without* the variable before, the kernel cannot be
    interpreted in this process: every case is skipped and ``run_file_in_subprocess`` re-runs
    the test file in a fresh ``python -m pytest`` with TRITON_INTERPRET=1.
* CUDA present: the same tests run natively on ``device="cuda"`` (the CPU parameter is
  skipped), unless TRITON_INTERPRET=1 was set by the caller.

kd_triton itself is never reloaded (it registers torch.library ops, once per process); it
looks its kernels up in kd_kernels at each call, so reloading kd_kernels is enough.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ENV = "TRITON_INTERPRET"
HAS_CUDA = torch.cuda.is_available()
INTERPRET = (not HAS_CUDA) or os.environ.get(ENV) == "1"


def _is_interpreted(fn) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def _can_interpret_in_process() -> bool:
    """False when triton was already imported in compiled mode (its tl.* helpers are not interpretable)."""
    if "triton" not in sys.modules:
        return True
    import triton.language.standard as tl_standard

    return _is_interpreted(tl_standard.max)


def _load():
    """(kd_kernels, kd_triton), the kernels interpreted iff INTERPRET."""
    saved = os.environ.get(ENV)
    if INTERPRET:
        os.environ[ENV] = "1"
    try:
        kernels = importlib.import_module("distill_export.losses.kd_kernels")
        if _is_interpreted(kernels._kd_rows_kernel) != INTERPRET:
            kernels = importlib.reload(kernels)  # re-runs @triton.jit with the env now set
        kd_triton = importlib.import_module("distill_export.losses.kd_triton")
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    assert _is_interpreted(kernels._kd_rows_kernel) == INTERPRET, "kernel in the wrong interpreter mode"
    return kernels, kd_triton


# Decided before anything here imports triton.
IN_PROCESS = (not INTERPRET) or _can_interpret_in_process()
kd_kernels, kd_triton = _load() if IN_PROCESS else (None, None)

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CUDA present: the fused kernel is tested natively on cuda")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not HAS_CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)")]),
]

FILTERS = [
    # Masked lanes compute (−inf) − (−inf) before a where() discards it; numpy warns.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


def enter(request, monkeypatch) -> None:
    """The body of each test file's autouse fixture (kd.py's dispatcher accepts CPU tensors for
    impl='fused' only under TRITON_INTERPRET=1)."""
    if not IN_PROCESS and request.node.originalname != "test_interpreter_subprocess":
        pytest.skip("triton was imported without TRITON_INTERPRET=1: run by test_interpreter_subprocess")
    if INTERPRET:
        monkeypatch.setenv(ENV, "1")
    monkeypatch.setenv("DISTILL_KD_AUTOTUNE", "0")  # native: fixed configs (test_autotuned_launch times them)


def run_file_in_subprocess(test_file: str) -> None:
    """Fallback: test_file in a fresh interpreter with TRITON_INTERPRET=1 set before triton's import."""
    if IN_PROCESS:
        pytest.skip("kernel cases ran in this process")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, ENV: "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(test_file).resolve()), "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-o", "addopts=", "-o", "required_plugins="],  # one process: no workers for one file
        cwd=repo, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
