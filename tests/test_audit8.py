"""Eighth hostile audit (issue 24; docs/reliability.md, "Tenth round"):
- J10/J1: a report.json latency row whose p50 is above its p90 (or a JSON `true` for a time) made
  `report` crash in the plot (negative error bar); it is now a corrupt record, one line, exit 2;
- SW1: tools/same_weights.py on a checkpoint holding a meta tensor raised torch's
  NotImplementedError; it now refuses the file in one line (the product's check_weight_kind)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.record.models import LatencyRow

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def measured_row(record: dict) -> dict:
    return next(r for r in record["latency"] if r.get("p50_ms") is not None)


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.update(p50_ms=r["p90_ms"] * 2 + 1.0), "p50_ms"),
    (lambda r: r.update(p50_ms=True), "p50_ms is true, not a number"),
])
def test_j10_a_latency_row_out_of_order_or_boolean_is_a_corrupt_record(run_copy, edit, needle):
    path = run_copy / "report.json"
    record = json.loads(path.read_text())
    edit(measured_row(record))
    path.write_text(json.dumps(record))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert line.startswith(f"error: {path} is corrupt") and needle in line, line
    assert snapshot(run_copy) == before


def test_j10_measured_order_statistics_pass_and_ties_within_rounding_pass():
    from distill_export.profiling.measure import latency_stats

    stats = latency_stats([0.001, 0.002, 0.002, 0.003, 0.010], batch=1)
    LatencyRow(model="student", format="onnx", backend="ort-cpu", batch=1, threads=1, **stats)
    tie = 0.1 + 0.2  # 0.30000000000000004: an interpolation a rounding step above its neighbour
    LatencyRow(model="s", format="onnx", backend="b", p50_ms=tie, p90_ms=0.3)
    with pytest.raises(ValueError, match="min_ms 2.0 is above p50_ms 1.0"):
        LatencyRow(model="s", format="onnx", backend="b", min_ms=2.0, p50_ms=1.0)


def test_sw1_same_weights_refuses_a_meta_tensor_in_one_line(tiny_run, tmp_path):
    state = torch.load(tiny_run / "student.pt", map_location="cpu", weights_only=True)
    weights = state["state_dict"] if "state_dict" in state else state
    key = next(k for k, v in weights.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    weights[key] = torch.empty_like(weights[key], device="meta")
    forged = tmp_path / "s_meta.pt"
    torch.save(state, forged)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "tools" / "same_weights.py"), str(forged),
                           str(tiny_run / "student.pt")], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and "meta device" in lines[0] and key in lines[0], lines[0]
    assert snapshot(tmp_path) == before
