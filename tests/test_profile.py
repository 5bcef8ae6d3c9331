"""Profiler (distill_export/profiling): statistics on known samples, the sweep's rows,
interleaving, skipped backends and their reasons, presets, bad input, and the CLI on a
real run directory (conftest's `tiny_run`, copied so the shared one stays untouched)."""

from __future__ import annotations

import csv
import gc
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.config import ProfileConfig
from distill_export.errors import BackendUnavailable, ConfigError
from distill_export.profiling import Bench, Sweep, latency_stats, make_settings, measure_cell, run_sweep, speedups
from distill_export.profiling import settings as settings_mod
from distill_export.profiling import targets as targets_mod
from distill_export.profiling.measure import ROUNDS, time_calls
from distill_export.profiling.settings import STANDALONE_BATCHES, resolve_threads
from distill_export.runtimes import onnx_runtime, openvino_cpu, pytorch

runner = CliRunner()
FAST = ["--warmup", "0.01", "--min-time", "0.05", "--min-iters", "5", "-q"]
# The ONNX runtimes that measure here: OpenVINO (the optional extra) joins ONNX Runtime when installed.
ONNX_BACKENDS = ["onnxruntime-cpu"] + ([] if openvino_cpu.openvino_missing() else ["openvino-cpu"])


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


# ----- statistics --------------------------------------------------------------------------------


def test_latency_stats_on_known_samples():
    st = latency_stats(np.arange(1, 101) / 1e3, batch=4)  # 1, 2, ..., 100 ms
    assert st["mean_ms"] == pytest.approx(50.5)
    assert st["std_ms"] == pytest.approx(29.011491975882016)  # sample std (ddof=1)
    assert st["min_ms"] == pytest.approx(1.0) and st["max_ms"] == pytest.approx(100.0)
    # linear interpolation between order statistics: p = 1 + q·99
    assert st["p50_ms"] == pytest.approx(50.5)
    assert st["p90_ms"] == pytest.approx(90.1)
    assert st["p95_ms"] == pytest.approx(95.05)
    assert st["p99_ms"] == pytest.approx(99.01)
    assert st["iterations"] == 100
    assert st["throughput"] == pytest.approx(4 * 1000 / 50.5)  # samples per second


def test_latency_stats_one_sample_and_none():
    st = latency_stats([0.002], batch=1)
    assert st["std_ms"] == 0.0 and st["p99_ms"] == pytest.approx(2.0) and st["throughput"] == pytest.approx(500)
    with pytest.raises(ValueError):
        latency_stats([], batch=1)


class FakeClock:
    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        return self.t

    def work(self):
        self.t += self.step


@pytest.mark.parametrize("seconds,min_calls,expected", [(1.0, 3, 4), (0.1, 7, 7), (0.0, 1, 1)])
def test_time_calls_stops_when_both_count_and_time_are_reached(seconds, min_calls, expected):
    clock = FakeClock(step=0.25)  # exact in binary: no rounding at the deadline
    out = time_calls(clock.work, seconds, min_calls, clock=clock)
    assert len(out) == expected
    assert out == [0.25] * expected


# ----- the sweep, with fake benches ----------------------------------------------------------


def _bench(model: str, log: list, device: str = "cpu", fail_at_batch: int | None = None, fmt="pytorch") -> Bench:
    def make(batch: int, threads: int):
        if batch == fail_at_batch:
            raise BackendUnavailable(f"fixed batch of {fail_at_batch - 1}")
        return lambda: log.append(model)

    return Bench(model, f"fake-{device}", fmt, make, device, {"params": 1})


SWEEP = Sweep(batches=[1, 8, 32], threads=[1, 2], warmup_s=0.0, min_time_s=0.0, min_iters=5)


@pytest.fixture
def frozen_heap():
    """measure_cell runs gc.collect() before each cell; late in a long session the objects of
    every earlier test made each sweep here take ~3 s (0.2 s alone). They are not this test's
    garbage: freeze them (gc.freeze moves them out of the collector's reach) for its duration."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_sweep_has_a_row_for_every_bench_batch_and_threads(frozen_heap):
    log: list[str] = []
    gone = Bench("teacher", "fake-gpu", "pytorch", None, "cuda", {}, skipped="no CUDA GPU is visible")
    rows = run_sweep([_bench("teacher", log), _bench("student", log), gone], SWEEP)
    measured = {(r["model"], r["batch"], r["threads"]) for r in rows if "p50_ms" in r}
    assert measured == {(m, b, t) for m in ("teacher", "student") for b in (1, 8, 32) for t in (1, 2)}
    assert all(r["iterations"] >= 5 and r["params"] == 1 for r in rows if "p50_ms" in r)
    # CPU time per call only where it equals latency without preemption: one CPU thread
    assert all(("cpu_p50_ms" in r) == (r["threads"] == 1) for r in rows if "p50_ms" in r)
    skipped = [r for r in rows if "skipped" in r]
    assert skipped == [rows[-1]]  # after the measured rows, once, with its reason
    assert skipped[0]["skipped"] == "no CUDA GPU is visible" and skipped[0]["batch"] is None


def test_cell_level_skip_carries_its_reason(frozen_heap):
    log: list[str] = []
    rows = run_sweep([_bench("student", log, fail_at_batch=32)], SWEEP)
    bad = [r for r in rows if r["batch"] == 32]
    assert len(bad) == 2 and all(r["skipped"] == "fixed batch of 31" for r in bad)
    assert all("p50_ms" in r for r in rows if r["batch"] != 32)


def test_gpu_benches_run_once_per_batch_not_per_thread_count(frozen_heap):
    rows = run_sweep([_bench("student", [], device="cuda")], SWEEP)
    assert sorted((r["batch"], r["threads"]) for r in rows) == [(1, 2), (8, 2), (32, 2)]


def test_models_are_interleaved_in_rotating_rounds():
    log: list[str] = []
    sweep = Sweep(batches=[1], threads=[1], warmup_s=0.0, min_time_s=0.0, min_iters=ROUNDS)
    measure_cell([_bench("a", log), _bench("b", log), _bench("c", log)], 1, 1, sweep)
    timed = log[3 * 3:]  # after three warm-up calls each: one call per model per round
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c", "b", "c", "a"]


def test_speedups_are_ratios_of_medians_from_the_same_cell():
    def row(model, backend, fmt, batch, threads, p50):
        cpu = {"cpu_p50_ms": p50 / 2} if threads == 1 else {}
        return {"model": model, "backend": backend, "format": fmt, "device": "cpu", "batch": batch,
                "threads": threads, "p50_ms": p50, **cpu}

    rows = [
        row("teacher", "pytorch-cpu", "pytorch", 1, 1, 10.0), row("teacher", "pytorch-cpu", "pytorch", 1, 2, 6.0),
        row("student", "pytorch-cpu", "pytorch", 1, 1, 2.0), row("student", "pytorch-cpu", "pytorch", 1, 2, 3.0),
        row("teacher", "onnxruntime-cpu", "onnx", 1, 1, 4.0), row("student", "onnxruntime-cpu", "onnx", 1, 1, 1.0),
        {"model": "student", "backend": "tensorrt", "format": "tensorrt", "batch": None, "threads": None, "skipped": "x"},
    ]
    got = {(s["format"], s["threads"], s["like_for_like"]): s for s in speedups(rows)}
    assert set(got) == {("pytorch", 1, True), ("pytorch", 2, True), ("onnx", 1, True), ("onnx", 1, False)}
    assert got[("pytorch", 1, True)]["speedup"] == pytest.approx(5.0)
    assert got[("pytorch", 1, True)]["cpu_speedup"] == pytest.approx(5.0)
    assert got[("pytorch", 2, True)]["speedup"] == pytest.approx(2.0) and "cpu_speedup" not in got[("pytorch", 2, True)]
    assert got[("onnx", 1, False)]["speedup"] == pytest.approx(10.0)  # vs the teacher in PyTorch eager
    assert got[("onnx", 1, False)]["reference"] == "teacher (pytorch-cpu)"
    assert got[("onnx", 1, True)]["speedup"] == pytest.approx(4.0)  # vs the teacher on ORT too
    assert got[("onnx", 1, True)]["reference"] == "teacher (onnxruntime-cpu)"


# ----- settings: presets, threads, backends ------------------------------------------------------


def test_threads_are_deduped_sorted_and_capped_at_the_core_count():
    threads, notes = resolve_threads([4, 1, 2, 0, 2], cores=2)
    assert threads == [1, 2]
    assert len(notes) == 1 and "4 threads" in notes[0]
    with pytest.raises(ConfigError):
        resolve_threads([-1], cores=2)


def test_presets_and_defaults():
    cfg = ProfileConfig()
    assert cfg.batches == [1, 32]  # the `run` pipeline keeps its quicker sweep
    one = make_settings(cfg, preset="cpu-1t")
    assert one.sweep.threads == [1] and one.backends == ["torch-cpu", "ort-cpu", "ov-cpu", "tensorrt"]
    assert one.sweep.batches == [1, 32]
    standalone = make_settings(cfg, preset="cpu-4t", standalone=True)
    assert standalone.sweep.batches == STANDALONE_BATCHES == [1, 8, 32, 128]
    assert standalone.sweep.threads == resolve_threads([4])[0]
    hand = make_settings(cfg, preset="cpu-1t", threads=[2], batches=[3], standalone=True)
    assert hand.sweep.threads == resolve_threads([2])[0] and hand.sweep.batches == [3]  # flags beat the preset
    every = make_settings(cfg, device="cpu", standalone=True)
    assert every.sweep.threads == resolve_threads([1, 2, 4, 0])[0]


def test_unknown_preset_and_backend_name_the_choices():
    with pytest.raises(ConfigError, match=r"unknown target preset 'cpu-2t'.*cpu-1t, cpu-4t, gpu"):
        make_settings(ProfileConfig(), preset="cpu-2t")
    with pytest.raises(ConfigError, match=r"unknown backend 'onnxruntime'.*ort-cpu"):
        make_settings(ProfileConfig(), backends="onnxruntime")


def test_a_backend_asked_for_and_missing_names_what_to_install(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "ort_providers", lambda: ("CPUExecutionProvider",))
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        make_settings(ProfileConfig(), backends="ort-cpu,ort-cuda")
    monkeypatch.setattr(pytorch, "torch_missing", lambda: "torch is not installed (pip install torch)")
    with pytest.raises(BackendUnavailable, match="pip install torch"):
        make_settings(ProfileConfig(), backends="torch-cpu")


def test_gpu_preset_without_any_gpu_backend_is_an_error(monkeypatch):
    monkeypatch.setattr(settings_mod, "unavailable", lambda backend: "no GPU")
    with pytest.raises(BackendUnavailable, match="GPU target.*onnxruntime-gpu"):
        make_settings(ProfileConfig(), preset="gpu")


def test_default_backends_that_cannot_run_become_skipped_rows(run_copy, monkeypatch):
    real = targets_mod.unavailable
    monkeypatch.setattr(targets_mod, "unavailable",
                        lambda b: "no CUDAExecutionProvider; pip install onnxruntime-gpu" if b.name == "ort-cuda" else real(b))
    settings = make_settings(ProfileConfig(), batches=[1], threads=[1], device="cpu")
    settings.backends = ["ort-cpu", "ort-cuda"]  # as the gpu preset would pick them, not named by the user
    settings.sweep.warmup_s, settings.sweep.min_time_s, settings.sweep.min_iters = 0.0, 0.01, 3
    benches = targets_mod.benches_for_targets([run_copy / "student.onnx"], settings)
    rows = run_sweep(benches, settings.sweep)
    assert [r["backend"] for r in rows if "p50_ms" in r] == ["onnxruntime-cpu"]
    (skipped,) = [r for r in rows if "skipped" in r]
    assert skipped["backend"] == "onnxruntime-cuda" and "onnxruntime-gpu" in skipped["skipped"]


# ----- bad input: one line, exit 2 ---------------------------------------------------------------


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error:"), result.output
    return " ".join(lines)  # rich wraps long lines at the test terminal's width


@pytest.mark.parametrize("name,content,expect", [
    ("broken.onnx", b"not a protobuf", "is not a loadable ONNX model"),
    ("broken.pt", b"not a zip", "is not a readable checkpoint"),
    ("notes.txt", b"hello", "unsupported profile target"),
])
def test_corrupt_or_unsupported_file_is_one_line_error(tmp_path, name, content, expect):
    (tmp_path / name).write_bytes(content)
    assert expect in _one_line_error(runner.invoke(app, ["profile", str(tmp_path / name), *FAST]))


def test_missing_target_and_unknown_preset_are_one_line_errors(tmp_path, run_copy):
    assert "does not exist" in _one_line_error(runner.invoke(app, ["profile", str(tmp_path / "nope.onnx")]))
    text = _one_line_error(runner.invoke(app, ["profile", str(run_copy), "--target", "arm"]))
    assert "unknown target preset 'arm'" in text and "cpu-1t" in text


# ----- the real thing: a run directory and loose files -------------------------------------------


def test_profile_run_dir_writes_rows_speedups_csv_and_report(run_copy):
    result = runner.invoke(app, ["profile", str(run_copy), "--batch", "1,4", "--threads", "1", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((run_copy / "report.json").read_text())
    got = {(r["model"], r["format"], r["backend"], r["batch"]) for r in report["latency"] if "p50_ms" in r}
    # Every ONNX export of the run (the demo recipe exports onnx and onnx-int8) gets its rows.
    onnx_formats = [f for f, art in report["exports"].items() if art["runtime"] == "onnxruntime"]
    assert "onnx" in onnx_formats
    expected = [("teacher", "pytorch", "pytorch-cpu"), ("student", "pytorch", "pytorch-cpu")]
    expected += [("teacher", "onnx", be) for be in ONNX_BACKENDS]  # the teacher's own ONNX: like-for-like rows
    expected += [("student", f, be) for f in onnx_formats for be in ONNX_BACKENDS]
    assert got == {(m, f, be, b) for m, f, be in expected for b in (1, 4)}
    skipped = [r for r in report["latency"] if "skipped" in r]
    if "openvino-cpu" not in ONNX_BACKENDS:  # the extra not installed: one row per ONNX file says so
        assert {(r["model"], r["format"], r["backend"]) for r in skipped} == (
            {("teacher", "onnx", "openvino-cpu")} | {("student", f, "openvino-cpu") for f in onnx_formats})
        assert all(r["skipped"] == "OpenVINO is not installed (pip install distill-export[openvino])" for r in skipped)
    else:
        assert not skipped
    for r in report["latency"]:
        if "skipped" in r:
            continue
        assert r["params"] > 0 and r["macs"] > 0 and r["size_bytes"] > 0 and r["threads"] == 1
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert {(s["format"], s["batch"]) for s in report["speedups"]} == {(f, b) for f in ("pytorch", *onnx_formats) for b in (1, 4)}
    assert all(s["speedup"] > 0 for s in report["speedups"])
    meta = report["profile"]
    assert meta["settings"]["batches"] == [1, 4] and meta["machine"]["cores"] >= 1 and meta["peak_rss_mb"] > 0
    with open(run_copy / "latency.csv") as f:
        assert len(list(csv.DictReader(f))) == len(report["latency"])
    assert (run_copy / "plots" / "latency_vs_batch.png").is_file()
    assert "latency_vs_batch.png" in (run_copy / "report.html").read_text()


def test_profile_loose_files_to_out_dir(run_copy, tmp_path):
    out = tmp_path / "prof"
    result = runner.invoke(app, ["profile", str(run_copy / "student.onnx"), str(run_copy / "teacher.pt"),
                                 "--batch", "2", "--threads", "1", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "profile.json").read_text())
    # OpenVINO's row is measured, or (not installed) skipped with the reason
    assert {(r["model"], r["backend"]) for r in saved["latency"]} == {
        ("teacher", "pytorch-cpu"), ("student", "onnxruntime-cpu"), ("student", "openvino-cpu")}
    sps = saved["speedups"]
    assert len(sps) == len(ONNX_BACKENDS)  # one per measured student row
    assert all(sp["model"] == "student" and sp["reference"] == "teacher (pytorch-cpu)" for sp in sps)
    assert (out / "latency.csv").is_file() and (out / "profile.html").is_file()


def test_onnx_macs_and_params_match_the_torch_count(run_copy):
    import torch

    from distill_export.nets.model_io import load_student
    from distill_export.profiling.modelinfo import onnx_info
    from distill_export.profiling.modelinfo import count_macs, count_params

    student, meta = load_student(run_copy / "student.pt")
    info = onnx_info(run_copy / "student.onnx")
    assert info["macs"] == count_macs(student, torch.zeros(1, *meta["input_shape"]))
    # BatchNorm folds into the convs on export: ONNX has no running stats, torch counts BN's affine terms
    bn = sum(m.weight.numel() + m.bias.numel() for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv_bias = sum(m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is None)
    assert info["params"] == count_params(student) - bn + conv_bias
