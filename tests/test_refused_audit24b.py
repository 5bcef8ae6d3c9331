"""Bad cases of the issue-24 hostile audit (B2, B3, B4): each is refused up front in one line,
exit 2, naming the thing, with no file changed. docs/reliability.md lists them with these tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from _byo_fixtures import write_rows
from _cli_checks import one_line_error, snapshot
from _video_fixtures import clip_frames, write_frame_folder
from distill_export.cli import app
from distill_export.config import RunConfig

runner = CliRunner()


def _error_after_data_note(result) -> str:
    """one_line_error, after the loader's note on stderr (rows held decoded), which -q keeps."""
    lines = [ln for ln in (result.output or "").splitlines() if ln.strip() and "held decoded" not in ln]
    result.output_bytes = "\n".join(lines).encode()
    return one_line_error(result, 2)


def _video_only_manifest(root):
    write_frame_folder(root / "fr", clip_frames(5))
    splits = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    return write_rows(root / "v.csv", [{"video": "fr", "label": i % 2, "split": s} for i, s in enumerate(splits)])


def test_classification_of_a_video_column_is_refused_before_training(tmp_path):
    """B2: a classifier's fusion teacher has no video encoder (was a 58-line traceback, exit 1)."""
    manifest = _video_only_manifest(tmp_path / "data")
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train-teacher", "--data", str(manifest), "--out", str(tmp_path / "x"),
                                 "-q", "--teacher-epochs", "1", "--label-fraction", "1"])  # 8 rows: 5% keeps none
    line = _error_after_data_note(result)
    assert "'video' is video" in line and "classification" in line and "image, audio, text, vector" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "x").exists()


@pytest.mark.parametrize("command,teacher", [("run", None), ("train-teacher", "checkpoint")])
def test_teacher_weights_without_a_factory_teacher_is_refused(tmp_path, command, teacher):
    """B3: --teacher-weights loads into a package.module:factory teacher only; with a teacher the
    run trains, or a checkpoint, it was recorded in config.yaml and never applied."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not read")
    args = [command, "--out", str(tmp_path / "r"), "-q", "--teacher-weights", str(weights)]
    if teacher:
        (tmp_path / "t.pt").write_bytes(b"not read either")
        args += ["--teacher", str(tmp_path / "t.pt")]
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, args), 2)
    assert "--teacher-weights" in line and "teacher.weights" in line and "package.module:factory" in line
    assert ("is not one" in line) == bool(teacher)
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("gate", ["int8_agreement=0.9", "fp16_agreement=0.9"])
def test_a_gate_without_an_export_of_its_precision_is_refused(tmp_path, gate):
    """B4: validate --gate int8_agreement on a run with only an FP32 export exited 0, the gate unused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig().to_dict(), sort_keys=False))
    (run / "report.json").write_text(json.dumps(
        {"exports": {"onnx": {"format": "onnx", "precision": "fp32", "path": "student.onnx"}}}))
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["validate", str(run), "--gate", gate]), 2)
    name = gate.split("=")[0]
    assert f"--gate {name}" in line and "onnx (fp32)" in line
    assert snapshot(tmp_path) == before


# ----- tools/explore_variants.py: every variant checked before the teacher trains (B11) ------------
EXPLORE_CASES = [
    (["{name: ../escaped}"], "'../escaped' is not a plain folder name"),
    (["{name: teacher}"], "'teacher' is not a plain folder name"),
    (["{name: a}", "{name: a}"], "'a' is given twice"),
    (["{name: a}", "{name: b, distill.epochs: 0}"], "variant b: distill.epochs"),
    (["{name: a}", "{name: b, nope.key: 1}"], "variant b: unknown key 'nope'"),
]


@pytest.mark.parametrize("variants,needle", EXPLORE_CASES, ids=["escape", "teacher", "twice", "epochs0", "unknown"])
def test_explore_variants_checks_every_variant_before_any_work(tmp_path, monkeypatch, capsys, variants, needle):
    import importlib.util
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parents[1] / "tools"
    monkeypatch.syspath_prepend(str(tools))
    spec = importlib.util.spec_from_file_location("tool_explore_variants", tools / "explore_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["explore_variants.py", "--out", str(tmp_path / "ex" / "out"), *variants])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "ex").exists() and not (tmp_path / "escaped").exists()  # no teacher trained, nothing made


# ----- video frame folders: each frame by the image columns' per-mode rules (B1) ---------------------
def _frames(folder, images):
    folder.mkdir(parents=True)
    for t, im in enumerate(images):
        im.save(folder / f"{t:03d}.{'tif' if im.mode == 'F' else 'png'}")
    return folder


def test_frame_folders_decode_16_bit_alpha_and_float_frames_like_image_columns(tmp_path):
    from PIL import Image

    from distill_export.data.video import ClipReader

    reader = ClipReader(3, None, "auto")
    i16 = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    clip, _ = reader._decode_folder(_frames(tmp_path / "i16", [i16] * 3), None)
    assert (clip == 128).all()  # 32768 / 65535 held at 8 bits (was 255)
    clear = Image.new("LA", (4, 4), (255, 0))  # white, fully transparent: black over black
    clip, _ = reader._decode_folder(_frames(tmp_path / "la", [clear] * 3), None)
    assert (clip == 0).all()  # (was 255: alpha dropped)
    half = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    clip, _ = reader._decode_folder(_frames(tmp_path / "f", [half] * 3), None)
    assert (clip == 128).all()  # mode F in [0, 1] (was 0)


def test_a_negative_float_frame_is_refused_naming_its_file(tmp_path):
    from PIL import Image

    from distill_export.data.video import ClipReader
    from distill_export.errors import DataError

    ok = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    bad = Image.fromarray(np.full((4, 4), -3.0, np.float32))
    folder = _frames(tmp_path / "neg", [ok, bad, ok])
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"001\.tif: mode F .* from -3 to -3"):  # (was read as 0, accepted)
        ClipReader(3, None, "auto")._decode_folder(folder, None)
    assert snapshot(tmp_path) == before


def test_report_refuses_to_write_through_a_symlinked_plots_folder(tiny_run, tmp_path):
    """B8: RUN/plots a link to a user's folder: `report RUN` overwrote the user's png through it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    user = tmp_path / "userplots"
    user.mkdir()
    (user / "accuracy_vs_latency.png").write_text("the user's own file")
    shutil.rmtree(run / "plots", ignore_errors=True)
    (run / "plots").symlink_to(user)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["report", str(run)]), 2)
    assert "plots is a symbolic link" in line and str(user) in line
    assert snapshot(tmp_path) == before and (run / "plots").is_symlink()
