"""A user's ONNX file runs with bounds: inputs checked before anything is allocated, each call
stopped after a time limit, SIGTERM honoured during a call.

The hostile files are built here with onnx.helper, a few hundred bytes each: a Loop with a
trip count of 10^15, a static 1x3x50000x50000 input (30 GB once fed), an input with no shape.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError, DataError

runner = CliRunner()
PROFILE_FAST = ["--batch", "1", "--threads", "1", "--warmup", "0.01", "--min-time", "0.02", "--min-iters", "3"]


def _save(graph, path: Path) -> Path:
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def spin_model(path: Path, input_shape=("batch", 4)) -> Path:
    """y = Loop(trip count 10^15) adding 1 to a scalar: never returns on its own."""
    body = h.make_graph(
        [h.make_node("Add", ["v_in", "one"], ["v_out"]), h.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [h.make_tensor_value_info("i", TensorProto.INT64, []), h.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [h.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [h.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    graph = h.make_graph(
        [h.make_node("Loop", ["trip", "cond", "v0"], ["v"], body=body),
         h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         h.make_node("Add", ["s", "v"], ["y"])], "spin",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [h.make_tensor("trip", TensorProto.INT64, [], [10**15]), h.make_tensor("cond", TensorProto.BOOL, [], [True]),
         h.make_tensor("v0", TensorProto.FLOAT, [1], [0.0])])
    return _save(graph, path)


def identity_model(path: Path, shape) -> Path:
    return _save(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g",
                              [h.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [h.make_tensor_value_info("y", TensorProto.FLOAT, None)]), path)


def no_shape_model(path: Path) -> Path:
    x = onnx.ValueInfoProto(name="x")
    x.type.tensor_type.elem_type = TensorProto.FLOAT  # a type, no shape: unknown rank
    return _save(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [h.make_tensor_value_info("y", TensorProto.FLOAT, None)]), path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- shapes, before anything is allocated --------------------------------------------------------
def test_profile_refuses_a_huge_static_input_before_allocating(tmp_path):
    path = identity_model(tmp_path / "huge.onnx", [1, 3, 50000, 50000])
    assert path.stat().st_size < 200
    before = digest(path)
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet"]), 2)
    assert str(path) in line and "'x'" in line and "[1, 3, 50000, 50000]" in line and "27.9 GiB" in line
    assert digest(path) == before


def test_profile_refuses_an_input_shape_flag_too_large(tmp_path):
    """A dynamic input fed from --input-shape: the feed is checked before numpy allocates it."""
    path = identity_model(tmp_path / "dyn.onnx", ["batch", "c", "h", "w"])
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet",
                                              "--input-shape", "3,50000,50000"]), 2)
    assert "'x'" in line and "[1, 3, 50000, 50000]" in line and "refused before allocating" in line


def test_profile_input_shape_of_another_rank_names_both_ranks(tmp_path):
    """--input-shape given, of the wrong rank: the message said to pass --input-shape (a fresh
    audit of issue 24); it names the input, its rank and the flag's rank, the file unchanged."""
    path = identity_model(tmp_path / "dyn.onnx", ["batch", "n"])
    before = digest(path)
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet",
                                              "--input-shape", "5,3,3"]), 2)
    assert str(path) in line and "'x'" in line and "rank 2" in line and "--input-shape 5,3,3 has rank 3" in line
    assert "pass --input-shape" not in line
    assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx"]


def test_profile_refuses_an_input_of_unknown_rank(tmp_path):
    path = no_shape_model(tmp_path / "norank.onnx")
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet"]), 2)
    assert str(path) in line and "'x'" in line and "unknown rank" in line


def test_a_normal_model_still_profiles(tmp_path):
    path = identity_model(tmp_path / "ok.onnx", ["batch", 4])
    result = runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet"])
    assert result.exit_code == 0, result.output


def test_teacher_onnx_input_is_checked_against_the_data(tmp_path):
    """validate's teacher ONNX: the data, not the file, decides the feed; a mismatch is one line."""
    from distill_export.config import ValidateConfig
    from distill_export.tasks import get_task
    from distill_export.validate import validate_teacher_onnx

    path = identity_model(tmp_path / "teacher.onnx", [1, 3, 50000, 50000])
    parity = {"inputs": {"x": np.zeros((4, 1, 8, 8), np.float32)}, "logits": np.zeros((4, 3), np.float32),
              "labels": np.zeros(4, np.int64)}
    with pytest.raises(DataError, match=r"huge|27.9 GiB"):
        validate_teacher_onnx(path, parity, ValidateConfig(), get_task("classification"))
    path = identity_model(tmp_path / "teacher2.onnx", ["batch", 2, 8, 8])
    with pytest.raises(DataError, match=r"expects input x of shape \[batch, 2, 8, 8\].*\[batch, 1, 8, 8\]"):
        validate_teacher_onnx(path, parity, ValidateConfig(), get_task("classification"))


# ----- time: a runaway call is stopped ----------------------------------------------------------------
def test_profile_stops_a_runaway_loop_at_the_limit(tmp_path):
    path = spin_model(tmp_path / "spin.onnx")
    assert path.stat().st_size < 400  # 370 bytes
    start = time.monotonic()
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet",
                                              "--max-call-s", "1"]), 2)
    assert time.monotonic() - start < 15
    assert str(path) in line and "limit of 1 s" in line and "max_call_s" in line


def test_validate_stops_a_runaway_teacher_onnx(tmp_path):
    from distill_export.config import ValidateConfig
    from distill_export.tasks import get_task
    from distill_export.validate import validate_teacher_onnx

    path = spin_model(tmp_path / "teacher.onnx")
    parity = {"inputs": {"x": np.zeros((4, 4), np.float32)}, "logits": np.zeros((4, 3), np.float32),
              "labels": np.zeros(4, np.int64)}
    start = time.monotonic()
    with pytest.raises(DataError, match=r"limit of 0.5 s"):
        validate_teacher_onnx(path, parity, ValidateConfig(max_call_s=0.5), get_task("classification"))
    assert time.monotonic() - start < 5


def test_validate_runner_stops_a_runaway_student(tmp_path):
    """The path `validate RUN` takes for each export (make_runner -> the runtime's runner)."""
    from distill_export.runtimes.onnx_bounds import call_limit
    from distill_export.validate import make_runner

    path = spin_model(tmp_path / "student.onnx", ["batch", 1, 8, 8])
    run = make_runner({"path": str(path), "runtime": "onnxruntime", "format": "onnx"}, 1, (1, 8, 8))
    with call_limit(0.5), pytest.raises(DataError, match=r"student.onnx: one ONNX Runtime call ran longer"):
        run(np.zeros((2, 1, 8, 8), np.float32), 2)


def test_sigterm_during_a_call_is_honoured_in_process():
    """The CLI's SIGTERM handler raises Terminated; it runs while a call is in flight."""
    from distill_export.interrupts import Terminated, raise_terminated as _on_sigterm
    from distill_export.runtimes.onnx_bounds import bounded_run
    from distill_export.runtimes.onnx_runtime import onnx_session

    path = spin_model(Path(os.environ.get("TMPDIR", "/tmp")) / f"spin-{os.getpid()}.onnx")
    try:
        session = onnx_session(path, 1)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(Terminated):
                bounded_run(session, {"x": np.zeros((1, 4), np.float32)}, path)  # default limit: 60 s
        finally:
            signal.signal(signal.SIGTERM, previous)
        assert time.monotonic() - start < 3
    finally:
        path.unlink()


@pytest.mark.slow
def test_sigterm_during_a_runaway_profile_exits_143(tmp_path):
    """As a user runs it: SIGTERM while the Loop spins (default limit, 60 s) ends it at once."""
    path = spin_model(tmp_path / "spin.onnx")
    proc = subprocess.Popen([sys.executable, "-m", "distill_export.cli", "profile", str(path), *PROFILE_FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the sweep starts: the next thing it does is the first call
            if "profiling batch" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - start < 10
    assert proc.returncode == 143, err
    lines = [x for x in (out + err).splitlines() if x.strip()]
    assert lines[-1] == "terminated (SIGTERM)" and "Traceback" not in err and "onnxruntime" not in err, lines


# ----- the setting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_call_s_flag_out_of_range_is_one_line(value, tmp_path):
    path = identity_model(tmp_path / "ok.onnx", ["batch", 4])
    line = one_line_error(runner.invoke(app, ["profile", str(path), *PROFILE_FAST, "--quiet", "--max-call-s", value]), 2)
    assert "--max-call-s" in line


@pytest.mark.parametrize("key", ["validate.max_call_s", "profile.max_call_s"])
def test_max_call_s_config_out_of_range_names_the_key(key, tmp_path):
    from distill_export.config import load_config

    section, field = key.split(".")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {field}: 0\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("avdigits", cfg)


@pytest.mark.slow  # needs the shared tiny_run (one reduced end-to-end run)
def test_validate_run_with_a_runaway_student_onnx(tiny_run, tmp_path):
    """`validate RUN` after student.onnx was swapped for the Loop: one line, exit 2, nothing written."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shape = list(np.load(run / "parity_data.npz")["x"].shape[1:])
    spin_model(run / "student.onnx", ["batch", *shape])
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["validate"]["max_call_s"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run)
    line = one_line_error(runner.invoke(app, ["validate", str(run)]), 2)
    assert "student.onnx" in line and "limit of 1 s" in line
    assert snapshot(run) == before
