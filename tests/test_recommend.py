"""recommend.py: the artifact to ship per profiled target, from hand-built report dicts."""

from __future__ import annotations

import pytest
from rich.console import Console

from distill_export.recommend import recommend, update_run
from distill_export.report import print_summary, recommendation_lines


def _gates(passed: bool) -> dict:
    return {"top1_agreement": {"value": 1.0 if passed else 0.9, "limit": 0.98, "kind": "min", "passed": passed}}


def _export(fmt: str, precision: str, passed: bool = True, drop: float = 0.0, accuracy: float = 0.9) -> dict:
    path = {"onnx": "student.onnx", "onnx-fp16": "student-fp16.onnx", "onnx-int8": "student-int8.onnx"}.get(fmt, fmt)
    return {"path": path, "precision": precision, "runtime": "onnxruntime", "size_bytes": 100,
            "parity": {"accuracy": accuracy - drop, "accuracy_drop": drop, "top1_agreement": 1.0,
                       "gates": _gates(passed), "passed": passed}}


def _row(model, fmt, backend, p50, threads=1, batch=1, device="cpu", **extra):
    return {"model": model, "format": fmt, "backend": backend, "device": device, "batch": batch,
            "threads": threads, "p50_ms": p50, **extra}


def _report(latency, exports=None) -> dict:
    return {"exports": exports if exports is not None else {
        "onnx": _export("onnx", "fp32"), "onnx-fp16": _export("onnx-fp16", "fp16", drop=0.001),
        "onnx-int8": _export("onnx-int8", "int8", drop=0.004)}, "latency": latency}


ORT = "onnxruntime-cpu"


def test_fastest_gate_passing_artifact_with_its_speedups_and_accuracy_drop():
    rep = _report([
        _row("teacher", "pytorch", "pytorch-cpu", 10.0), _row("teacher", "onnx", ORT, 4.0),
        _row("student", "pytorch", "pytorch-cpu", 2.0),
        _row("student", "onnx", ORT, 1.0, cpu_p50_ms=0.9), _row("student", "onnx-fp16", ORT, 1.5),
        _row("student", "onnx-int8", ORT, 0.5),
    ])
    rec = recommend(rep)
    assert set(rec) == {"cpu-1t"}
    r = rec["cpu-1t"]
    assert (r["format"], r["backend"], r["precision"], r["path"]) == ("onnx-int8", ORT, "int8", "student-int8.onnx")
    assert r["p50_ms"] == 0.5 and r["accuracy_drop"] == pytest.approx(0.004) and r["accuracy"] == pytest.approx(0.896)
    assert r["speedup_vs_fp32_onnx"] == pytest.approx(2.0)  # 1.0 / 0.5
    assert r["speedup_vs_teacher"] == pytest.approx(8.0)  # 4.0 / 0.5: the teacher's ONNX on ORT, not eager
    assert r["teacher_reference"] == "teacher (onnx, onnxruntime-cpu)"
    assert r["excluded"]["onnx-fp16 on onnxruntime-cpu"].startswith("slower than the FP32 ONNX")
    assert r["excluded"]["onnx on onnxruntime-cpu"].startswith("slower")
    # The PyTorch student is the reference, not an artifact: never a candidate.
    assert "pytorch on pytorch-cpu" not in r["excluded"]


def test_an_artifact_that_failed_a_gate_is_excluded_even_when_fastest():
    exports = {"onnx": _export("onnx", "fp32"), "onnx-int8": _export("onnx-int8", "int8", passed=False)}
    rep = _report([_row("student", "onnx", ORT, 1.0), _row("student", "onnx-int8", ORT, 0.2)], exports)
    r = recommend(rep)["cpu-1t"]
    assert r["format"] == "onnx" and r["speedup_vs_fp32_onnx"] == pytest.approx(1.0)
    assert r["excluded"]["onnx-int8 on onnxruntime-cpu"] == "failed parity gate(s): top1_agreement"


def test_an_unvalidated_artifact_is_excluded():
    exports = {"onnx": _export("onnx", "fp32"), "onnx-int8": {**_export("onnx-int8", "int8"), "parity": None}}
    rep = _report([_row("student", "onnx", ORT, 1.0), _row("student", "onnx-int8", ORT, 0.2)], exports)
    r = recommend(rep)["cpu-1t"]
    assert r["format"] == "onnx" and "not validated" in r["excluded"]["onnx-int8 on onnxruntime-cpu"]


def test_never_an_artifact_slower_than_fp32_onnx_even_when_fp32_failed_its_gates():
    """FP32 failed parity (so it is not recommended) but it still sets the bar: INT8 at 1.2 ms
    against FP32's 1.0 ms is slower and is refused too; nothing is recommended."""
    exports = {"onnx": _export("onnx", "fp32", passed=False), "onnx-int8": _export("onnx-int8", "int8")}
    rep = _report([_row("student", "onnx", ORT, 1.0), _row("student", "onnx-int8", ORT, 1.2)], exports)
    r = recommend(rep)["cpu-1t"]
    assert r["format"] is None and "no export passed" in r["reason"]
    assert r["reason"].endswith("as fast as the FP32 ONNX, which itself failed its parity gates")  # 52nd audit A1
    assert r["excluded"]["onnx-int8 on onnxruntime-cpu"].startswith("slower than the FP32 ONNX here (1.2 ms vs 1 ms")
    assert recommendation_lines({"recommended": {"cpu-1t": r}}) == [f"recommended for cpu-1t: none ({r['reason']})"]


def test_slower_than_fp32_int8_is_never_chosen_on_each_target():
    """INT8 pays on one thread but not on two: each target gets its own answer."""
    rep = _report([
        _row("student", "onnx", ORT, 1.0, threads=1), _row("student", "onnx-int8", ORT, 0.6, threads=1),
        _row("student", "onnx", ORT, 0.5, threads=2), _row("student", "onnx-int8", ORT, 0.55, threads=2),
    ])
    rec = recommend(rep)
    assert rec["cpu-1t"]["format"] == "onnx-int8" and rec["cpu-2t"]["format"] == "onnx"
    assert rec["cpu-2t"]["threads"] == 2


@pytest.mark.parametrize("int8_ms,expected", [(1.0, "onnx"), (0.97, "onnx"), (0.94, "onnx-int8")])
def test_ties_within_5_percent_go_to_the_smaller_accuracy_drop(int8_ms, expected):
    """An exact tie or INT8 3% faster (noise on a shared machine): FP32 keeps its accuracy and
    wins. 6% faster is outside the tolerance: INT8 wins."""
    rep = _report([_row("student", "onnx", ORT, 1.0), _row("student", "onnx-int8", ORT, int8_ms)],
                  {"onnx": _export("onnx", "fp32"), "onnx-int8": _export("onnx-int8", "int8", drop=0.004)})
    r = recommend(rep)["cpu-1t"]
    assert r["format"] == expected
    loser = "onnx-int8" if expected == "onnx" else "onnx"
    assert loser + " on onnxruntime-cpu" in r["excluded"]


def test_exact_tie_with_equal_drops_prefers_higher_precision():
    exports = {"onnx": _export("onnx", "fp32"), "onnx-fp16": _export("onnx-fp16", "fp16"),
               "onnx-int8": _export("onnx-int8", "int8")}
    rep = _report([_row("student", f, ORT, 0.5) for f in ("onnx-int8", "onnx-fp16", "onnx")], exports)
    assert recommend(rep)["cpu-1t"]["format"] == "onnx"
    r = recommend(rep, tie_tolerance=0.0)["cpu-1t"]
    assert r["format"] == "onnx"  # exact equality is still a tie
    assert "tied within 0%" in r["excluded"]["onnx-int8 on onnxruntime-cpu"]


def test_gpu_target_and_missing_teacher_reason():
    rep = _report([
        _row("student", "onnx", "onnxruntime-cuda", 0.3, threads=2, device="cuda"),
        _row("student", "onnx", ORT, 1.0),
        {"model": "teacher", "format": "onnx", "backend": ORT, "batch": None, "threads": None,
         "skipped": "the teacher was not exported to ONNX: operator x::y"},
    ])
    rec = recommend(rep)
    assert set(rec) == {"cpu-1t", "gpu"}
    assert rec["gpu"]["backend"] == "onnxruntime-cuda" and rec["gpu"]["device"] == "cuda"
    assert rec["cpu-1t"]["speedup_vs_teacher"] is None
    assert rec["cpu-1t"]["teacher_missing"] == "the teacher was not exported to ONNX: operator x::y"
    line = recommendation_lines({"recommended": rec})[0]
    assert "no teacher on onnxruntime-cpu (the teacher was not exported to ONNX: operator x::y)" in line


def test_only_batch_1_rows_count_and_no_student_rows_means_no_target():
    rep = _report([_row("student", "onnx", ORT, 1.0, batch=32), _row("teacher", "pytorch", "pytorch-cpu", 3.0)])
    assert recommend(rep) == {}
    assert recommend(rep, batch=32)["cpu-1t"]["format"] == "onnx"


def test_summary_prints_the_recommendation_and_update_run_replaces_stale_targets(tmp_path):
    from distill_export.files import write_json
    from distill_export.rundir import RunDir

    rep = _report([_row("teacher", "onnx", ORT, 4.0), _row("student", "onnx", ORT, 1.0),
                   _row("student", "onnx-int8", ORT, 0.5)])
    rep["recommended"] = {"cpu-4t": {"format": "onnx"}}  # from an earlier profile: must go
    write_json(tmp_path / "report.json", rep)
    rec = update_run(RunDir(tmp_path))
    assert set(rec) == {"cpu-1t"} and set(RunDir(tmp_path).load_report()["recommended"]) == {"cpu-1t"}
    console = Console(record=True, width=300)
    print_summary({**rep, "recommended": rec}, console)
    text = console.export_text()
    assert ("recommended for cpu-1t: onnx-int8 on onnxruntime-cpu (student-int8.onnx): p50 0.500 ms at batch 1, "
            "accuracy drop +0.40 points, ×2.00 vs student FP32 ONNX, ×8.0 vs teacher (onnx, onnxruntime-cpu)") in text
