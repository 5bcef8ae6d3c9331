"""The fused KD kernels compile for an H100/H200 (sm_90) without a GPU: Triton's own ptxas, in a
fresh process without TRITON_INTERPRET (tools/compile_kd_offline.py). The interpreter runs the
kernels' arithmetic but never compiles them; this catches what only a compile would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton has no NVIDIA backend with its own ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "compile_kd_offline.py"), "--quick"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 failed" in done.stdout and "local(spill)=0" in done.stdout
