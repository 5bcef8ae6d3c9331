"""Reports for people (report.py): report.html exists, is offline and references plots that
exist; report.md links them; plots are skipped with a note when matplotlib is missing;
the terminal summary carries accuracy, parity, p50 and speedups. Built from a synthetic
report.json, so these run in well under a second each."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from distill_export import report as report_mod
from distill_export.files import write_json
from distill_export.report import (
    PLOTS_SKIPPED,
    latency_table,
    print_latency,
    print_summary,
    tradeoff_points,
    write_reports,
)
from distill_export.rundir import RunDir


def _lat(model, fmt, backend, batch, threads, p50):
    return {"model": model, "format": fmt, "backend": backend, "device": "cpu", "batch": batch, "threads": threads,
            "mean_ms": p50 * 1.1, "std_ms": p50 / 10, "min_ms": p50 * 0.9, "p50_ms": p50, "p90_ms": p50 * 1.2,
            "p95_ms": p50 * 1.3, "p99_ms": p50 * 1.5, "max_ms": p50 * 2, "iterations": 50,
            "throughput": batch * 1e3 / (p50 * 1.1), "params": 100, "macs": 1000, "size_bytes": 2048}


def synthetic_report() -> dict:
    latency = []
    for threads, scale in ((1, 1.0), (2, 0.6)):
        for batch in (1, 32):
            latency += [_lat("teacher", "pytorch", "pytorch-cpu", batch, threads, 1.0 * batch * scale),
                        _lat("teacher", "onnx", "onnxruntime-cpu", batch, threads, 0.4 * batch * scale),
                        _lat("student", "pytorch", "pytorch-cpu", batch, threads, 0.2 * batch * scale),
                        _lat("student", "onnx", "onnxruntime-cpu", batch, threads, 0.05 * batch * scale)]
    latency.append({"model": "student", "format": "tensorrt-fp16", "backend": "tensorrt", "device": "cuda",
                    "batch": None, "threads": None, "skipped": "TensorRT is not installed (pip install tensorrt)"})
    metric = lambda acc: {"accuracy": acc, "macro_f1": acc, "macro_precision": acc, "macro_recall": acc}  # noqa: E731
    gates = {"max_abs_diff": {"value": 1e-6, "limit": 1e-4, "kind": "max", "passed": True}}
    return {
        "dataset": {"name": "avdigits", "sizes": {"train": 10, "val": 5, "test": 5}, "labeled_train_rows": 10},
        "metrics": {"teacher": metric(0.97), "baseline": metric(0.60), "student": metric(0.62)},
        "kd_gain": 0.02,
        "distill": {"temperature": 4.0, "alpha": 0.5, "beta": 0.0, "label_fraction": 1.0},
        "exports": {"onnx": {"path": "student.onnx", "precision": "fp32", "runtime": "onnxruntime", "size_bytes": 2048,
                             "parity": {"max_abs_diff": 1e-6, "top1_agreement": 1.0, "accuracy": 0.62, "gates": gates,
                                        "passed": True}}},
        "latency": latency,
        "speedups": [{"model": "student", "format": f, "backend": b, "batch": 1, "threads": 1,
                      "reference": f"teacher ({ref})", "like_for_like": ref == b, "speedup": s}
                     for f, b, ref, s in (("pytorch", "pytorch-cpu", "pytorch-cpu", 5.0),
                                          ("onnx", "onnxruntime-cpu", "onnxruntime-cpu", 8.0),
                                          ("onnx", "onnxruntime-cpu", "pytorch-cpu", 20.0))],
        "profile": {"machine": {"cpu": "Test CPU", "cores": 2, "load_average_1m": 0.5},
                    "versions": {"python": "3.11", "onnxruntime": "1.x"}, "peak_rss_mb": 100.0,
                    "settings": {"warmup_s": 0.2, "min_time_s": 0.5, "min_iters": 20}, "notes": []},
        "timings": {"profile": 1.0, "total": 2.0},
    }


@pytest.fixture()
def written(tmp_path):
    write_json(tmp_path / "report.json", synthetic_report())
    write_reports(RunDir(tmp_path))
    return tmp_path


def test_html_exists_is_offline_and_references_plots_that_exist(written):
    page = (written / "report.html").read_text()
    refs = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert {"plots/latency_vs_batch.png", "plots/accuracy_vs_latency.png", "latency.csv"} <= refs
    for ref in refs:
        assert (written / ref).is_file(), ref
    for png in ("latency_vs_batch.png", "accuracy_vs_latency.png"):
        assert (written / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page and "@import" not in page
    assert "×20.00" in page and "TensorRT is not installed" in page and "Test CPU" in page


def test_markdown_links_plots_csv_and_html(written):
    md = (written / "report.md").read_text()
    for link in ("(plots/latency_vs_batch.png)", "(plots/accuracy_vs_latency.png)", "(latency.csv)", "(report.html)"):
        assert link in md
    assert "| student | onnx | onnxruntime-cpu | 1 | 1 |" in md


def test_without_matplotlib_plots_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod.plots, "_pyplot", lambda: None)
    write_json(tmp_path / "report.json", synthetic_report())
    write_reports(RunDir(tmp_path))
    assert not (tmp_path / "plots").exists()
    assert PLOTS_SKIPPED in (tmp_path / "report.html").read_text()
    assert PLOTS_SKIPPED in (tmp_path / "report.md").read_text()
    assert (tmp_path / "latency.csv").is_file()


def test_latency_table_puts_skipped_rows_last_with_their_reason():
    rows = latency_table(synthetic_report())
    assert len(rows) == 17
    assert rows[-1][:3] == ["student", "tensorrt-fp16", "tensorrt"]
    assert rows[-1][5].startswith("skipped: TensorRT is not installed")


def test_tradeoff_has_teacher_student_and_each_export_at_batch_1_fewest_threads():
    points = {label: (ms, acc) for label, ms, acc in tradeoff_points(synthetic_report())}
    assert points == {
        "teacher (pytorch, pytorch-cpu)": (1.0, 0.97),
        "student (pytorch, pytorch-cpu)": (0.2, 0.62),
        "student (onnx, onnxruntime-cpu)": (0.05, 0.62),
    }


def test_tradeoff_has_the_teachers_export_with_its_parity_accuracy():
    """47th audit M1: teacher.onnx was profiled and scored, yet left off accuracy_vs_latency.png."""
    report = synthetic_report()
    report["teacher_exports"] = {"onnx": {**report["exports"]["onnx"], "path": "teacher.onnx"}}
    report["teacher_exports"]["onnx"]["parity"] = {**report["exports"]["onnx"]["parity"], "accuracy": 0.96}
    points = {label: (ms, acc) for label, ms, acc in tradeoff_points(report)}
    assert points["teacher (onnx, onnxruntime-cpu)"] == (0.4, 0.96)
    assert len(points) == 4


def test_terminal_summary_has_accuracy_parity_p50_and_speedups():
    console = Console(record=True, width=200)
    print_summary(synthetic_report(), console)
    text = console.export_text()
    assert "97.0%" in text and "PASS" in text and "×8.0" in text and "×5.0" in text
    # The headline is like for like; the cross-runtime ×20 (ORT student vs eager teacher) is not in it.
    assert "×20.0" not in text
    assert ("student vs teacher on the same runtime (onnxruntime-cpu, batch 1, 1 thread(s)): ×8.0 (onnx)"
            in text.replace("\n", " "))
    assert "p50 ms b1 1t" in text and "p50 ms b1 2t" in text
    assert "not profiled: student (tensorrt-fp16) on tensorrt: TensorRT is not installed" in text
    console = Console(record=True, width=200)
    print_latency(synthetic_report(), console)
    text = console.export_text()
    assert "skipped student (tensorrt-fp16) on tensorrt" in text and "Test CPU" in text


def test_skipped_rows_of_one_backend_and_reason_share_a_line_and_keep_their_brackets():
    report = synthetic_report()
    why = "OpenVINO is not installed (pip install distill-export[openvino])"
    report["latency"] += [{"model": m, "format": "onnx", "backend": "openvino-cpu", "device": "cpu", "skipped": why}
                          for m in ("teacher", "student")]
    console = Console(record=True, width=300)
    print_summary(report, console)
    text = console.export_text()
    assert f"not profiled: teacher (onnx), student (onnx) on openvino-cpu: {why}" in text  # not eaten as markup


def test_a_column_name_in_the_modality_probe_is_escaped_in_report_md(tmp_path):
    """52nd audit F1: `without_<svg onload=alert(2)>*x*` went into report.md raw (report.html escaped it)."""
    report = synthetic_report()
    report["teacher"] = {"fusion": "concat", "modality_probe": {"without_<svg onload=alert(2)>*x*": 0.5}}
    write_json(tmp_path / "report.json", report)
    write_reports(RunDir(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "without\\_&lt;svg onload=alert(2)>\\*x\\*: 50.0%" in text, [x for x in text.splitlines() if "without" in x]
    assert "<svg" not in text
