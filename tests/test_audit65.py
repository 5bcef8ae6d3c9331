"""Fifty-ninth round and after (issue 24): what the sixty-fourth audit left arguable and the
sixty-fifth and later fresh audits found."""

from __future__ import annotations

import numpy as np
import pytest

from distill_export.errors import DataError


def _external_data_model(folder):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight])
    model = folder / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model),
                    save_as_external_data=True, location="w.bin", size_threshold=0)
    return model


def test_a64_t3_external_data_linked_from_beside_the_model_names_the_link(tmp_path):
    """A `w.bin` symlink beside the model that leads out of its folder was refused as "outside the
    model's folder", which the user, seeing w.bin beside the model, could not square."""
    from distill_export.runtimes.onnx_runtime import onnx_session

    model = _external_data_model(tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.bin"
    (tmp_path / "w.bin").rename(elsewhere)
    (tmp_path / "w.bin").symlink_to(elsewhere)
    with pytest.raises(DataError, match=rf"keeps its data in 'w.bin' \(a link to {elsewhere}\), outside the "
                                        r"model's folder; external data must sit beside the model, not be linked"):
        onnx_session(model)


def test_a64_t3_external_data_named_outside_without_a_link_says_no_link(tmp_path):
    from distill_export.runtimes.onnx_runtime import check_external_data

    model = _external_data_model(tmp_path)
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    proto.graph.initializer[0].external_data[0].value = "../w.bin"
    onnx.save_model(proto, str(model))
    with pytest.raises(DataError, match=r"keeps its data in '\.\./w\.bin', outside the model's folder") as caught:
        check_external_data(model)
    assert "a link" not in str(caught.value)


def test_a64_t2_same_weights_compares_a_checkpoint_with_its_bare_state_dict(tiny_run, tmp_path):
    """The same weights in student.pt and in a bare state_dict were "26 differences" (every tensor
    "only in" one file). Now the weights are compared, the container difference said, exit 1."""
    import torch

    from _cli_checks import run_same_weights

    state = torch.load(tiny_run / "student.pt", map_location="cpu", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    code, out = run_same_weights(tiny_run / "student.pt", bare)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[-1] == "same weights, other containers", out
    assert lines[0].startswith("the first is a checkpoint and the other a bare state_dict: compared their "
                               "weights; only the first holds arch, arch_kwargs, format, kind, meta"), out
    changed = dict(state)
    name = next(iter(changed))
    changed[name] = changed[name] + 1
    torch.save(changed, bare)
    code, out = run_same_weights(bare, tiny_run / "student.pt")
    assert code == 1 and out.strip().splitlines()[-1] == "1 differences in the weights", out
    assert f"{name}: tensors differ" in out and "only the second holds" in out


@pytest.mark.parametrize(("setting", "line"), [
    ("image_mode: rgb", "error: data.image_mode rgb applies to image or video columns, and the data has none "
                        "(modalities: audio); drop data.image_mode"),
    ("image_size: 32", "error: data.image_size 32 applies to image or video columns, and the data has none "
                       "(modalities: audio); drop data.image_size"),
])
def test_a65_b1_an_image_setting_on_data_without_images_is_refused(tmp_path, monkeypatch, setting, line):
    """image_mode/image_size on an audio-only manifest were recorded in config.yaml and report.json
    though nothing read them (65th audit B1)."""
    from typer.testing import CliRunner

    from _byo_fixtures import make_manifest
    from distill_export.cli import app
    from test_audit31 import _refused

    monkeypatch.chdir(tmp_path)
    manifest = make_manifest(tmp_path / "m", per_class=6, modalities=("audio",))
    (tmp_path / "c.yaml").write_text(f"data:\n  {setting}\n")
    said = _refused(CliRunner().invoke(app, ["train-teacher", "--data", str(manifest), "--student-modality", "audio",
                                             "--teacher-epochs", "1", "--config", "c.yaml", "--out", "t"]))
    assert said == line, said
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("setting", ["image_size: 32", "image_mode: rgb", "max_audio_seconds: 5"])
def test_a65_b1_a_decoding_setting_on_the_built_in_demo_is_refused(tmp_path, setting):
    from _cli_checks import refused_config

    line, _ = refused_config(tmp_path, f"data:\n  {setting}\n")
    key = setting.split(":")[0]
    assert line.startswith(f"error: data.{key} ") and line.endswith(
        "sets how a manifest's files are decoded, but data.source avdigits is the built-in demo, generated already "
        f"decoded; drop data.{key}"), line


def test_a65_b1_the_automatic_image_settings_pass_on_any_data(tmp_path):
    from distill_export.cli.options import load

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  image_size: 0\n  image_mode: auto\n")
    assert load(None, config, {}).data.image_mode == "auto"  # the demo: defaults given are true of it


@pytest.mark.parametrize("name", ["state.json", "report.json"])
@pytest.mark.parametrize("command", ["report", "distill"])
def test_a65_b2_a_record_cut_short_is_told_a_fix_that_works(run_copy, name, command):
    """A state.json or report.json cut short said "restore it or re-run the stage that writes it", and
    every stage command (the one that writes it too) answered the same line (65th audit B2)."""
    from typer.testing import CliRunner

    from _cli_checks import one_line_error, snapshot
    from distill_export.cli import app

    record = run_copy / name
    record.write_bytes(record.read_bytes()[:200])
    before = snapshot(run_copy)
    args = [command, str(run_copy)] + (["--epochs", "1"] if command == "distill" else [])
    line = one_line_error(CliRunner().invoke(app, args))
    assert line.startswith(f"error: {record} is corrupt (not valid JSON at line "), line
    assert line.endswith("; restore it from a copy or start a new run"), line
    assert snapshot(run_copy) == before


def test_a65_a1_a_killed_stage_backup_is_removed_by_the_next_command_that_takes_the_lock(run_copy):
    """A `kill -9` in a stage command leaves `.stage-backup/`; `run --resume` (which runs no
    transaction) finished the run and left it there (65th audit A1)."""
    from distill_export.rundir import BACKUP_DIR, RunDir

    backup = run_copy / BACKUP_DIR
    backup.mkdir()
    (backup / "student.pt").write_bytes(b"old")
    with RunDir(run_copy).lock():
        assert not backup.exists()


def test_a65_a3_persistent_workers_without_workers_is_refused(tmp_path):
    from _cli_checks import refused_config
    from distill_export.cli.options import load

    line, _ = refused_config(tmp_path, "data:\n  persistent_workers: false\n")
    assert line == ("error: data.persistent_workers false keeps DataLoader workers alive between epochs, but "
                    "data.num_workers is 0 (no workers); drop data.persistent_workers or set data.num_workers"), line
    config = tmp_path / "w.yaml"
    config.write_text("data:\n  persistent_workers: false\n  num_workers: 1\n")
    assert load(None, config, {}).data.persistent_workers is False


@pytest.mark.parametrize(("name", "kind"), [("w.npz", "a NumPy archive (.npz)"), ("w.npy", "a NumPy array (.npy)"),
                                            ("student.onnx", "an ONNX model")])
def test_a65_a2_a_student_init_of_another_format_is_named_by_its_format(run_copy, tmp_path, name, kind):
    """An .npz was refused with a raw C++ "enforce fail at inline_container.cc", an .onnx with
    "distill-export never unpickles code" (it is no pickle) (65th audit A2)."""
    import shutil

    from typer.testing import CliRunner

    from _cli_checks import one_line_error, snapshot
    from distill_export.cli import app

    path = tmp_path / name
    if name == "w.npz":
        np.savez(path, a=np.array([{"x": 1}], dtype=object))
    elif name == "w.npy":
        np.save(path, np.zeros(3))
    else:
        shutil.copy(run_copy / "student.onnx", path)
    before = snapshot(run_copy)
    line = one_line_error(CliRunner().invoke(app, ["distill", str(run_copy), "--student-init", str(path),
                                                   "--epochs", "1"]))
    assert line == f"error: --student-init {path} is {kind}, not a state_dict: it takes a .pt state_dict or a " \
                   ".safetensors file", line
    assert snapshot(run_copy) == before
