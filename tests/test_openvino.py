"""OpenVINO, the optional edge-CPU runtime (pip install distill-export[openvino]): it validates
and profiles the exported ONNX files themselves. Without the extra (as in CI) its rows are
skipped with the reason, and asking for it by name is a one-line error; with it, every CPU
format passes its parity gates on OpenVINO too and gets latency rows."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.runtimes import openvino_cpu

runner = CliRunner()
FAST = ["--warmup", "0.01", "--min-time", "0.05", "--min-iters", "5", "-q"]
MISSING = "OpenVINO is not installed (pip install distill-export[openvino])"
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install distill-export[openvino])")


@pytest.fixture()
def without_openvino(monkeypatch):
    """As if the extra were not installed: find_spec sees None, the cached check is refreshed."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    openvino_cpu.openvino_missing.cache_clear()
    yield
    openvino_cpu.openvino_missing.cache_clear()


@pytest.fixture(scope="module")
def all_formats_run(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("ov") / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["export", str(run), "--format", "onnx,onnx-fp16,onnx-int8", "--quiet"])
    assert result.exit_code == 0, result.output
    return run


def _validate(run):
    from distill_export.config import ValidateConfig
    from distill_export.validate import PARITY_FILE, load_parity_data, validate_exports

    report = json.loads((run / "report.json").read_text())
    exports = {f: {**a, "path": str(run / a["path"])} for f, a in report["exports"].items()}
    parity = load_parity_data(run / PARITY_FILE)
    from distill_export.tasks import get_task

    return validate_exports(exports, parity, ValidateConfig(), get_task("classification"), None)


def test_asking_for_openvino_without_it_is_one_line_and_exit_2(tiny_run, without_openvino):
    result = runner.invoke(app, ["profile", str(tiny_run / "student.onnx"), "--backend", "ov-cpu", *FAST])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: backend ov-cpu was asked for but cannot run: {MISSING}"


def test_without_openvino_its_rows_and_gates_are_skipped_with_the_reason(tiny_run, tmp_path, without_openvino):
    results = _validate(tiny_run)
    assert results["onnx"]["passed"] and results["onnx"]["runtimes"] == {"openvino": {"skipped": MISSING}}
    out = tmp_path / "prof"
    result = runner.invoke(app, ["profile", str(tiny_run / "student.onnx"), "--threads", "1", "--batch", "1",
                                 "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "profile.json").read_text())["latency"]
    ov = [r for r in rows if r["backend"] == "openvino-cpu"]
    assert len(ov) == 1 and ov[0]["skipped"] == MISSING and "p50_ms" not in ov[0]


@needs_openvino
def test_every_cpu_format_passes_its_gates_on_openvino(all_formats_run):
    from distill_export.validate import gate_rows

    results = _validate(all_formats_run)
    for fmt in ("onnx", "onnx-fp16", "onnx-int8"):
        on_ov = results[fmt]["runtimes"]["openvino"]
        assert on_ov["passed"], (fmt, on_ov["gates"])
        assert set(on_ov["per_batch"]) == {"1", "64"}  # the dynamic batch axis, exercised
    # FP32 on OpenVINO is the exported model: f32 precision pinned (bf16 would break this gate)
    assert results["onnx"]["runtimes"]["openvino"]["max_abs_diff"] <= 1e-4
    assert any(row[0] == "onnx-int8 on openvino" for row in gate_rows(results))


@needs_openvino
def test_openvino_profiles_onnx_files_and_is_recommendable(all_formats_run):
    from distill_export.recommend import recommend

    run = all_formats_run
    assert runner.invoke(app, ["validate", str(run)]).exit_code == 0
    result = runner.invoke(app, ["profile", str(run), "--backend", "ort-cpu,ov-cpu", "--threads", "1",
                                 "--batch", "1", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    measured = {(r["model"], r["format"]) for r in report["latency"] if r["backend"] == "openvino-cpu" and "p50_ms" in r}
    assert measured == {("teacher", "onnx"), ("student", "onnx"), ("student", "onnx-fp16"), ("student", "onnx-int8")}
    # Each OpenVINO row is judged by the artifact's gates on OpenVINO: drop them and the rows are out.
    for art in report["exports"].values():
        art["parity"].pop("runtimes")
    rec = recommend(report)["cpu-1t"]
    assert rec["backend"] == "onnxruntime-cpu"
    on_ov = {key: why for key, why in rec["excluded"].items() if key.endswith("on openvino-cpu")}
    assert set(on_ov) == {f"{f} on openvino-cpu" for f in ("onnx", "onnx-fp16", "onnx-int8")}
    assert set(on_ov.values()) == {"not validated (run `distill-export validate`) on OpenVINO"}
