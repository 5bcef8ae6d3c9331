"""Sixth hostile audit, weights, teachers, records and WAV codecs: SI_f8/PF8/SI_tf8/TR1 (a float8
tensor in a weight file was a traceback: torch has no isfinite for it), SI_sparse/SI_psparse (a
sparse tensor was a traceback, or a line naming nothing), W3/W2 (a teacher with non-finite
outputs left a run folder behind under `run`), RP_R5 (a negative latency in report.json was
plotted, with matplotlib's warning on stderr) and DW_alaw/DW_mulaw/DW_adpcm (a compressed WAV
was refused as "unknown format: 6"). One `error:` line, exit 2, nothing changed.
docs/reliability.md ("Eighth round") lists them with these tests."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
import yaml

from _cli_checks import snapshot
from _weights_world import KEY, cli, make_world, one_line_error, runner
from distill_export import preflight
from distill_export.cli import app
from distill_export.nets.checkpoint import save_checkpoint
from distill_export.nets.students import create_student


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("audit6_weights"))


def as_f8(t):
    return t.to(torch.float8_e4m3fn)


BAD_TENSORS = {  # name: (the tensor made from a float one, what the line names)
    "f8_e4m3fn": (as_f8, "is float8_e4m3fn, an 8-bit storage format"),
    "f8_e5m2": (lambda t: t.to(torch.float8_e5m2), "is float8_e5m2, an 8-bit storage format"),
    "sparse_coo": (lambda t: t.to_sparse(), "is a sparse tensor (layout sparse_coo)"),
    "sparse_csr": (lambda t: t.reshape(t.shape[0], -1).to_sparse_csr(), "is a sparse tensor (layout sparse_csr)"),
}


# ----- SI_f8 / SI_sparse / TR1: --student-init ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
@pytest.mark.parametrize("nproc", [None, "2"])
def test_a_float8_or_sparse_student_init_tensor_is_named_in_one_line(world, tmp_path, kind, nproc):
    """SI_f8, SI_sparse, TR1: a traceback (isfinite on float8; copy_ of a sparse tensor), before
    torchrun too. The refusal comes from the weight check, before the folder or torchrun."""
    make, says = BAD_TENSORS[kind]
    path = tmp_path / f"si_{kind}.pt"
    torch.save({KEY: make(torch.randn(4, 1, 3, 3)), "head.bias": torch.zeros(3)}, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "run", "--student-init", str(path), "--out", str(tmp_path / "r"),
                              *(["--nproc", nproc] if nproc else [])))
    assert line.startswith(f"error: --student-init {path}: tensor '{KEY}' {says}"), line
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()


def test_a_float8_safetensors_student_init_is_refused_too(world, tmp_path):
    """SI_f8.st was accepted while the same tensor in a .pt was a traceback: one rule for both."""
    from safetensors.torch import save_file

    path = tmp_path / "si_f8.safetensors"
    save_file({KEY: torch.randn(4, 1, 3, 3).to(torch.float8_e5m2)}, str(path))
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "run", "--student-init", str(path), "--out", str(tmp_path / "r")))
    assert line.startswith(f"error: --student-init {path}: tensor '{KEY}' is float8_e5m2"), line
    assert snapshot(tmp_path) == before


# ----- PF8 / SI_psparse / SI_tf8: checkpoints (profile FILE.pt, --teacher) --------------------------


def student_checkpoint(path, change) -> None:
    """A student checkpoint of the registry's tiny_cnn (28x28 gray, 10 classes), one weight changed."""
    model = create_student("tiny_cnn", 10, 1, 28)
    save_checkpoint(path, model, "student", "tiny_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 28},
                    {"input_shape": [1, 28, 28]})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][KEY] = change(payload["state_dict"][KEY])
    torch.save(payload, path)


@pytest.mark.parametrize("kind", ["f8_e4m3fn", "sparse_coo"])
def test_profile_names_a_float8_or_sparse_weight_of_a_checkpoint(tmp_path, kind):
    """PF8 (a traceback) and SI_psparse (a line stopping at "Error(s) in loading state_dict")."""
    make, says = BAD_TENSORS[kind]
    path = tmp_path / "s.pt"
    student_checkpoint(path, make)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["profile", str(path), "--batch", "1", "--threads", "1",
                                              "--out", str(tmp_path / "p"), "-q"]))
    assert line.startswith(f"error: {path}: tensor '{KEY}' {says}"), line
    assert snapshot(tmp_path) == before and not (tmp_path / "p").exists()


def test_a_teacher_with_a_float8_weight_is_named_in_one_line(world, tmp_path):
    """SI_tf8: `train-teacher --teacher` with a float8 head was a traceback."""
    payload = torch.load(world["teacher"], weights_only=True)
    payload["state_dict"]["head.weight"] = as_f8(payload["state_dict"]["head.weight"])
    path = tmp_path / "t_f8.pt"
    torch.save(payload, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "train-teacher", "--teacher", str(path), "--out", str(tmp_path / "t")))
    assert line.startswith(f"error: {path}: tensor 'head.weight' is float8_e4m3fn"), line
    assert snapshot(tmp_path) == before


# ----- W3 / W2: a teacher whose outputs are not finite leaves no run folder -------------------------


def overflowing_teacher(world, path) -> None:
    """Finite weights whose logits overflow to inf on the test rows (the audit's t_overflow.pt,
    larger: every head weight 3e38, so any row whose features sum away from zero overflows)."""
    payload = torch.load(world["teacher"], weights_only=True)
    for key in ("head.weight", "head.bias"):
        payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], 3e38)
    torch.save(payload, path)


@pytest.mark.parametrize("nproc", [None, "2"])
def test_a_teacher_with_non_finite_outputs_is_refused_before_the_run_folder_or_torchrun(world, tmp_path, nproc):
    """W3/W2: refused after the folder was made (left with config.yaml, state.json, report.json,
    blocking --out), and under --nproc 2 after torchrun started. Now its first test rows are
    tried in preflight: one line, no folder, no torchrun banner."""
    path = tmp_path / "t_overflow.pt"
    overflowing_teacher(world, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "run", "--teacher", str(path), "--no-self-training-control",
                              "--out", str(tmp_path / "W3"), *(["--nproc", nproc] if nproc else [])))
    assert line.startswith(f"error: teacher {path}: its outputs are not finite (logits hold NaN or inf on "), line
    assert "of the first" in line and "test rows" in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "W3").exists()


def test_a_refusal_inside_the_first_stage_removes_the_run_folder_run_made(world, tmp_path, monkeypatch):
    """W3 where the probe rows are finite and later rows are not: the stage's refusal removes the
    folder this `run` made (no stage finished), so the same --out works next time."""
    monkeypatch.setattr(preflight, "check_teacher_outputs", lambda *a: None)  # as if rows 0-7 were finite
    path = tmp_path / "t_overflow.pt"
    overflowing_teacher(world, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "run", "--teacher", str(path), "--no-self-training-control",
                              "--out", str(tmp_path / "W3")))
    assert line.startswith(f"error: teacher {path}: its outputs are not finite"), line
    assert "nothing was recorded" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "W3").exists()


# ----- RP_R5: latencies in report.json are finite and >= 0; matplotlib stays quiet ---------------


@pytest.fixture(scope="module")
def profiled(world, tmp_path_factory):
    """A run of every stage on the small manifest (the latency rows RP_R5 edits)."""
    out = tmp_path_factory.mktemp("audit6_run") / "R"
    config = tmp_path_factory.mktemp("audit6_cfg") / "c.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(world["config"].read_text()), "export": {"exporter": "torchscript"},
                                      "profile": {"batches": [1], "threads": [1], "warmup_s": 0.01,
                                                  "min_time_s": 0.05, "min_iters": 5}}))
    result = runner.invoke(app, ["run", "--config", str(config), "--data", str(world["manifest"]),
                                 "--teacher", str(world["teacher"]), "--no-self-training-control",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def edited_copy(run, tmp_path, edit):
    import shutil

    copy = tmp_path / "R"
    shutil.copytree(run, copy)
    record = json.loads((copy / "report.json").read_text())
    for row in record["latency"]:
        edit(row)
    (copy / "report.json").write_text(json.dumps(record))
    return copy


@pytest.mark.parametrize("value, says", [(-3.0, "greater than or equal to 0"), ("NaN", "finite number")])
def test_a_negative_or_nan_latency_in_report_json_is_a_corrupt_record(profiled, tmp_path, value, says):
    """RP_R5: -3 ms was accepted and plotted (matplotlib's warning on stderr), exit 0."""
    copy = edited_copy(profiled, tmp_path, lambda row: row.update(p50_ms=float(value)))
    before = snapshot(copy)
    line = one_line_error(runner.invoke(app, ["report", str(copy)]))
    assert line.startswith(f"error: {copy / 'report.json'} is corrupt: latency.0.p50_ms: ") and says in line, line
    assert snapshot(copy) == before


def test_plotting_never_lets_a_matplotlib_warning_reach_stderr(profiled, tmp_path):
    """0 ms (a valid record) on the log-scaled latency axes made matplotlib warn, with its source
    line, on stderr: the report is drawn, stderr stays empty."""
    def zero(row):
        row.update({k: 0.0 for k in row if k.endswith("_ms") and row[k] is not None})

    copy = edited_copy(profiled, tmp_path, zero)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "distill_export", "report", str(copy)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "plots.py" not in done.stderr, done.stderr
    assert (copy / "plots" / "latency.png").is_file() or list((copy / "plots").glob("*.png"))


# ----- DW_alaw / DW_mulaw / DW_adpcm: compressed WAV codecs named --------------------------------


def codec_wav(path, tag: int) -> None:
    """A mono 8 kHz WAV whose fmt chunk says codec `tag` (the samples are never decoded)."""
    data = b"\x55" * 2400
    fmt = struct.pack("<HHIIHH", tag, 1, 8000, 8000, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("tag, name", [(6, "A-law (WAVE_FORMAT_ALAW)"), (7, "mu-law (WAVE_FORMAT_MULAW)"),
                                       (2, "Microsoft ADPCM (WAVE_FORMAT_ADPCM)")])
def test_a_compressed_wav_is_named_with_how_to_convert_it(world, tmp_path, tag, name):
    """DW_alaw/DW_mulaw/DW_adpcm: refused with the wave module's "unknown format: 6"."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["manifest"].parent, data)
    wav = sorted((data / "wav").glob("*.wav"))[0]
    codec_wav(wav, tag)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", "--config", str(world["config"]), "--data", str(data / "manifest.csv"),
                                 "--out", str(tmp_path / "r"), "-q"])
    line = one_line_error(result)
    assert f"cannot read WAV file {wav}: its samples are {name}, format tag {tag}" in line, line
    assert "ffmpeg -i IN -c:a pcm_s16le OUT.wav" in line and "unknown format" not in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()
