"""A .pt2's call has the time limit an ONNX file's has (nets/pt2_bounds.py): a hostile program
whose forward is 60 unrolled 1024x1024 matmuls (over a second on one core) is stopped at the
limit in one line naming the file and the limit, through `profile F.pt2 --max-call-s` and
`run --teacher F.pt2` (validate.max_call_s); SIGALRM is left as it was."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.nets.external import load_export_program
from distill_export.nets.pt2_bounds import CallTooLong

runner = CliRunner()
PROFILE_FAST = ["--batch", "1", "--threads", "1", "--warmup", "0.01", "--min-time", "0.02", "--min-iters", "3",
                "--quiet"]


class Slow(nn.Module):
    """Takes the demo's image (1, 28, 28), returns 10 logits after 60 large matmuls."""

    def forward(self, image):
        h = torch.ones(1024, 1024) * image.mean()
        for _ in range(60):
            h = torch.tanh(h @ h)
        return image.flatten(1)[:, :10] + h.mean()


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> Path:
    batch = torch.export.Dim("batch", min=1)
    example = {"image": torch.rand(2, 1, 28, 28)}
    ep = torch.export.export(Slow().eval(), (), example, dynamic_shapes={"image": {0: batch}})
    path = tmp_path_factory.mktemp("pt2") / "slow.pt2"
    torch.export.save(ep, str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_program_is_slow_and_the_limit_stops_it(slow):
    """Control: unbounded, one call takes over a second; at 0.2 s it stops within ~0.5 s, and
    SIGALRM's handler and timer are as they were, after a stopped call and after a normal one."""
    torch.set_num_threads(1)
    handler = signal.getsignal(signal.SIGALRM)
    teacher = load_export_program(slow, max_call_s=1e6)
    x = {"image": torch.rand(1, 1, 28, 28)}
    start = time.monotonic()
    with torch.no_grad():
        teacher.forward_features(x)
    assert time.monotonic() - start > 1.0
    teacher.max_call_s = 0.2
    start = time.monotonic()
    with pytest.raises(CallTooLong, match=r"slow\.pt2: one call .* limit of 0\.2 s"), torch.no_grad():
        teacher.forward_features(x)
    assert time.monotonic() - start < 0.6
    assert signal.getsignal(signal.SIGALRM) == handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_profile_stops_a_slow_pt2_at_max_call_s(slow):
    before, folder = digest(slow), snapshot(slow.parent)
    start = time.monotonic()
    line = one_line_error(runner.invoke(app, ["profile", str(slow), *PROFILE_FAST, "--max-call-s", "0.2"]), 2)
    assert time.monotonic() - start < 5
    assert str(slow) in line and "limit of 0.2 s" in line and "max_call_s" in line
    assert digest(slow) == before and snapshot(slow.parent) == folder


def test_run_teacher_stops_a_slow_pt2_at_validate_max_call_s(slow, tmp_path):
    """`run --teacher F.pt2`: the teacher's check call is stopped at validate.max_call_s, before
    the run directory is made."""
    config = tmp_path / "limit.yaml"
    config.write_text(yaml.safe_dump({"validate": {"max_call_s": 0.2}}))
    before, out = digest(slow), tmp_path / "out"
    line = one_line_error(runner.invoke(app, ["run", "--teacher", str(slow), "--config", str(config),
                                              "--out", str(out), "--quiet"]), 2)
    assert str(slow) in line and "limit of 0.2 s" in line
    assert digest(slow) == before and not out.exists()
