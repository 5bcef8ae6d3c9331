"""tools/bench_export.py --size (bench_export_size.py): bad input is one line and exit 2; the stock-stem students at
real size give logits of the right shape and leave the registry's small-input students alone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_export.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_export", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,needle", [(["--size", "4"], "--size must be at least 8, got 4"),
                                         (["--size", "32", "--students", "vgg99"], "unknown student 'vgg99'")])
def test_bad_size_or_student_is_one_line_and_exit_2(args, needle):
    proc = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()  # on stderr, as every other refusal (it was on stdout)
    assert len(lines) == 1 and lines[0].startswith(f"error: {needle}") and not proc.stdout.strip()


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18", "tiny_cnn"])
def test_stock_students_take_rgb_at_real_size_and_the_registry_keeps_its_small_stems(name):
    from distill_export.nets.students import create_student

    tool = _tool()
    with torch.inference_mode():
        assert tool.bench_export_size.stock_student(name).eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
        # The registry's students still take 28x28 single-channel digits (stride-1 stems).
        assert create_student(name, 10, 1).eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
