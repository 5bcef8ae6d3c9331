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
    assert line.startswith("error: data.persistent_workers false sets whether DataLoader workers stay alive"), line
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


def test_a66_b3_a_ctrl_c_swallowed_in_a_weakref_callback_is_silent_and_still_stops_the_command():
    """Ctrl-C whose handler ran inside a torch weakref callback was printed as "Exception ignored in"
    with a traceback, and `run` went on through profile and report (66th audit B3)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import gc, sys, weakref
        from distill_export import interrupts
        interrupts.install()
        class Thing: pass
        thing = Thing()
        ref = weakref.ref(thing, lambda r: interrupts.raise_interrupted(2, None))  # Ctrl-C lands in the callback
        del thing; gc.collect()
        print("went on", flush=True)
        try:
            interrupts.raise_pending()
        except KeyboardInterrupt:
            print("stopped at the safe point", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["went on", "stopped at the safe point"], done.stdout
    assert done.stderr == "", done.stderr


def test_a66_b3_a_pending_interruption_marks_no_stage_done_and_starts_none(run_copy):
    import json

    from distill_export import interrupts
    from distill_export.rundir import RunDir

    run = RunDir(run_copy)
    state = (run_copy / "state.json").read_bytes()
    interrupts._unreported.append(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            run.mark_stage("report")
        with pytest.raises(KeyboardInterrupt):
            run.begin_stage("profile")
    finally:
        interrupts.reported_all()
    assert (run_copy / "state.json").read_bytes() == state
    assert json.loads(state)["stages"]["report"]["status"] == "done"


def _alpha_video(path, frames_with_alpha, pix_fmt):
    """FFV1 frames with an alpha channel: (T, H, W, 4) RGBA uint8 written as `pix_fmt`."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height = frames_with_alpha.shape[2], frames_with_alpha.shape[1]
        stream.pix_fmt = pix_fmt
        for f in frames_with_alpha:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgba").reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize(("pix_fmt", "rgb"), [("bgra", True), ("ya8", False)])
def test_a66_b1_a_video_with_alpha_decodes_like_its_frames_saved_as_png(tmp_path, pix_fmt, rgb):
    """An FFV1 `bgra` or `ya8` video decoded to the colour under its alpha (max 0.79 under alpha 0),
    where the same frames as RGBA/LA PNGs in a frame folder decode over black (66th audit B1)."""
    pytest.importorskip("av")
    from PIL import Image

    from _video_fixtures import clip_frames
    from distill_export.data.video import ClipReader

    colour = clip_frames(5, seed=2, rgb=True) if rgb else np.repeat(clip_frames(5, seed=2)[..., None], 3, axis=-1)
    alpha = np.full(colour.shape[:3] + (1,), 255, np.uint8)
    alpha[:, :, :8] = 0  # the left half transparent
    if rgb:  # (swscale's rgba -> ya8 writes alpha 128 as 129: half alpha is checked on bgra alone)
        alpha[:, :, 8:12] = 128
    rgba = np.concatenate([colour, alpha], axis=-1)
    video = _alpha_video(tmp_path / "c.mkv", rgba, pix_fmt)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(rgba):
        image = Image.fromarray(f, "RGBA")
        (image if rgb else image.convert("LA")).save(folder / f"{t:03d}.png")
    from_video = ClipReader(5, None, "auto").read(video, None)
    from_folder = ClipReader(5, None, "auto").read(folder, None)
    assert from_video[0].shape == from_folder[0].shape == (5, 3 if rgb else 1, 16, 16)
    assert from_video[0][..., :8].max() == 0.0
    assert np.array_equal(from_video[0], from_folder[0]) and np.array_equal(from_video[1], from_folder[1])


def test_a66_b2_a_coco_category_no_training_row_has_a_box_of_is_a_bad_row(tmp_path):
    """A COCO category with boxes on val/test images only was accepted (a class nothing trains on);
    the same data in label cells is refused, naming the row (66th audit B2)."""
    pytest.importorskip("av")
    import json

    from _video_fixtures import make_video_manifest
    from test_boxes import _coco, load

    from distill_export.data.manifest import ManifestError

    manifest = make_video_manifest(tmp_path, boxes=True)
    load(manifest)  # label cells: every class has a training box
    coco = _coco(manifest)
    train_ids = {100 + n for n in range(6)}  # the first six rows are the training split
    for a in coco["annotations"]:
        if a["image_id"] in train_ids and a["category_id"] == 7:
            a["category_id"] = 3  # "a" keeps boxes on val/test images only
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(ManifestError) as caught:
        load(manifest, annotations="instances.json")
    said = [str(p) for p in caught.value.problems]
    assert said and all("COCO category 'a' in its boxes: no training row has a box of it" in p for p in said), said
    lines = sorted(p.line for p in caught.value.problems)
    assert lines == [8, 10], lines  # rows 6 and 8 (val, test) hold class a; line = row + 2 (the header)


@pytest.mark.parametrize("suffix", ["#abc", "#1.5", "#+2", "#"])
def test_a66_a2_a_malformed_frame_index_is_named_not_the_file_it_follows(tmp_path, suffix):
    pytest.importorskip("av")
    from _video_fixtures import clip_frames
    from distill_export.data.video import ClipReader, write_video

    video = write_video(tmp_path / "c.mkv", clip_frames(5))
    cell = tmp_path / f"c.mkv{suffix}"
    with pytest.raises(DataError) as caught:
        ClipReader(5, None, "auto").read(cell, None)
    assert str(caught.value) == (f"{cell}: {suffix!r} is not a frame index: after '#' write the 0-based index of the "
                                 f"target frame as a whole number (e.g. {video}#2), or nothing for the centre frame")
    with pytest.raises(DataError, match="video file not found"):
        ClipReader(5, None, "auto").read(tmp_path / "missing.mkv#abc", None)


def test_a66_a5_frame_files_numbered_without_padding_keep_their_order(tmp_path):
    """frame_0 ... frame_10 sorted as text put frame_10 after frame_1: the centre frame was frame_4."""
    pytest.importorskip("av")
    from _byo_fixtures import write_png
    from distill_export.data.video import ClipReader

    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(11):
        write_png(folder / f"frame_{t}.png", np.full((8, 8), 200 + t, np.uint8))
    clip, frame = ClipReader(5, None, "auto").read(folder, None)
    assert [round(float(f.max()) * 255) for f in clip] == [203, 204, 205, 206, 207]
    assert round(float(frame.max()) * 255) == 205


def test_a66_a4_a_detection_tie_is_broken_by_the_map50_change_and_said_so():
    """Detection parity has no accuracy_drop: every tie went to precision while report.md said
    "the smaller accuracy drop wins" (66th audit A4)."""
    from types import SimpleNamespace

    from distill_export.recommend import recommend, tie_break

    def export(path, precision, delta):
        return {"path": path, "precision": precision, "runtime": "onnxruntime", "size_bytes": 100,
                "parity": {"map50_delta": delta, "gates": {}, "passed": True}}

    rows = [{"model": "student", "format": f, "backend": "onnxruntime-cpu", "device": "cpu", "batch": 1,
             "threads": 1, "p50_ms": p} for f, p in (("onnx", 1.0), ("onnx-fp16", 0.99), ("onnx-int8", 0.98))]
    exports = {"onnx": export("student.onnx", "fp32", 0.02), "onnx-fp16": export("student-fp16.onnx", "fp16", 0.0),
               "onnx-int8": export("student-int8.onnx", "int8", 0.05)}
    best = recommend({"exports": exports, "latency": rows})["cpu-1t"]
    assert best["format"] == "onnx-fp16", best  # tied within 5%: the smallest |ΔmAP50|, not fp32 by precision
    assert best["excluded"]["onnx on onnxruntime-cpu"].endswith("lost on score drop/precision")
    assert tie_break(SimpleNamespace(task=SimpleNamespace(name="detection"))) == "the smaller |ΔmAP50| wins"
    assert tie_break(SimpleNamespace(task=SimpleNamespace(name="classification"))) == "the smaller accuracy drop wins"


def test_a66_a3_kd_gain_names_the_data_that_ran_not_only_the_base_recipe(monkeypatch):
    """`kd_gain.py --config det.yaml` on a user's manifest titled its table "KD gain on avdigits"."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    tools = Path(__file__).resolve().parents[1] / "tools"
    monkeypatch.syspath_prepend(str(tools))
    spec = importlib.util.spec_from_file_location("tool_kd_gain_a66", tools / "kd_gain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = SimpleNamespace(recipe="avdigits", config="det.yaml")
    assert module.described(args, "v/manifest.csv") == "v/manifest.csv (recipe avdigits with --config det.yaml)"
    assert module.described(SimpleNamespace(recipe="avdigits", config=None), "avdigits") == "avdigits"


def test_a67_a1_a_tiny_first_image_setting_the_automatic_size_is_named(tmp_path, monkeypatch):
    """A 2x2 first image set the size of every image (data.image_size 0); the refusal said
    "data.image_size=0" without saying where that size came from (67th audit A1)."""
    from typer.testing import CliRunner

    from _byo_fixtures import make_manifest, read_rows, write_png
    from distill_export.cli import app

    monkeypatch.chdir(tmp_path)
    manifest = make_manifest(tmp_path / "m", per_class=6, modalities=("image", "audio"))
    first = read_rows(manifest)[0]["image"]
    write_png(manifest.parent / first, np.zeros((2, 2), np.uint8))
    result = CliRunner().invoke(app, ["train-teacher", "--data", str(manifest), "--student-modality", "image",
                                      "--teacher-epochs", "1", "--out", "t"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("error:")][-1]
    assert "inputs of shape (1, 2, 2) (data.image_size=0 (auto: the first image's size)): " in line, line
    assert not (tmp_path / "t").exists()


def _with_tune_record(run_copy, terms, distill=True, method="pseudo_label"):
    from distill_export.rundir import RunDir

    run = RunDir(run_copy)
    decision = {"distill": distill, "method": method, "terms": terms, "line": "chosen on validation"}
    run.update_report(tune={"trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0, "baseline_val_accuracy": 0.5,
                            "decision": decision})
    return run


def test_a68_b1_a_distill_that_overrides_the_tune_choice_drops_the_tune_record(run_copy):
    """`distill RUN --method dist` after `run --tune` chose labels only kept report.json's tune
    section: report.md said "Objective chosen by run --tune: labels only" beside the dist objective
    that ran (68th audit B1)."""
    from rich.console import Console

    from distill_export.launch import open_run
    from distill_export.tune_override import drop_if_overridden, overridden

    run = _with_tune_record(run_copy, [{"name": "ce", "weight": 1.0}], distill=False, method="labels_only")
    _, config = open_run(run_copy, {"distill.method": "dist"}, command="distill")
    assert overridden(config, run.load_report()["tune"]["decision"]) == "the objective"
    console = Console(record=True, width=300)
    drop_if_overridden(config, run, console)
    assert "tune" not in run.load_report()
    assert console.export_text().startswith("note: the objective differs from what run --tune chose (labels_only)")
    assert run.record_edited() is None  # the product's own write: no "edited" mark


def test_a68_b1_a_distill_that_runs_the_tune_choice_keeps_the_record(run_copy):
    from rich.console import Console

    from distill_export.launch import open_run
    from distill_export.methods import term_specs
    from distill_export.tune_override import drop_if_overridden

    _, config = open_run(run_copy, None, command="distill")
    terms = [{"name": s.name, "weight": s.weight, **s.params} for s in term_specs(config.distill)]
    run = _with_tune_record(run_copy, terms)
    console = Console(record=True, width=300)
    drop_if_overridden(config, run, console)
    assert run.load_report()["tune"]["decision"]["terms"] == terms and console.export_text() == ""


def test_a68_a1_resume_says_whether_the_tune_search_is_reused_or_runs_again(run_copy):
    """A `run --tune 5000` stopped on trial 302 resumed with "running distill, then ..." and ran
    every trial again, unsaid (68th audit A1)."""
    from distill_export.rundir import RunDir

    run = RunDir(run_copy)
    run.begin_stage("distill")
    again = run.resume_summary(None, tunes=True)
    assert again.endswith("(the run --tune search runs from its first trial: a search stopped before it finished "
                          "keeps no trials)"), again
    (run_copy / "tune.json").write_text("{}")
    (run_copy / "tuned.yaml").write_text("{}\n")
    assert run.resume_summary(None, tunes=True).endswith("(the run --tune choice is reused from tune.json)")
    assert "run --tune" not in run.resume_summary(None)


def _edit_npz(path, change):
    with np.load(path) as f:
        arrays = dict(f)
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(("change", "says"), [
    (lambda z: z[next(k for k in z if k.startswith("x__"))].flat.__setitem__(0, np.nan),
     "holds 1 NaN or inf values in its 'x__"),
    (lambda z: z.__setitem__("logits", z["logits"] * 0 + 5), "changed after export"),
])
def test_a70_b1_b2_a_teacher_parity_file_changed_after_export_is_refused(run_copy, change, says):
    """A NaN written into teacher_parity_data.npz, or its logits replaced, was validated as the
    teacher's ONNX failing its gates (exit 0), with Infinity written into report.json (70th B1, B2)."""
    from typer.testing import CliRunner

    from _cli_checks import one_line_error, snapshot
    from distill_export.cli import app

    parity = run_copy / "teacher_parity_data.npz"
    _edit_npz(parity, change)
    before = snapshot(run_copy)
    line = one_line_error(CliRunner().invoke(app, ["validate", str(run_copy), "-q"]))
    assert line.startswith(f"error: {parity} ") and says in line, line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("backend", ["", ",", " ", "ort-cpu,"])
def test_a70_b3_a1_an_empty_backend_item_is_refused(run_copy, tmp_path, backend):
    """`--backend ""` said "RUN has nothing to profile yet; run distill" of a finished run, and
    `--backend ort-cpu,` dropped the empty item (70th audit B3, A1)."""
    from typer.testing import CliRunner

    from _cli_checks import one_line_error
    from distill_export.cli import app

    line = one_line_error(CliRunner().invoke(app, ["profile", str(run_copy), "--backend", backend,
                                                   "--out", str(tmp_path / "p")]))
    assert line == f"error: --backend: expected comma-separated backend names, got {backend!r} (an empty item)", line
    assert not (tmp_path / "p").exists()


def test_a70_a3_threads_that_replace_a_presets_are_noted():
    from distill_export.config import ProfileConfig
    from distill_export.profiling.settings import make_settings

    settings = make_settings(ProfileConfig(), preset="cpu-4t", threads=[1])
    assert settings.notes[0] == "--threads 1 replaces the cpu-4t preset's threads (4)", settings.notes
    assert not any("preset" in n for n in make_settings(ProfileConfig(), preset="cpu-4t").notes)


def test_a69_a1_a_killed_writes_temporary_file_is_removed_under_the_lock(run_copy, tmp_path):
    """`kill -9` in an export left `.teacher.onnx.bm9h20or.tmp` in the run, which no later command removed."""
    from distill_export.rundir import RunDir

    left = [run_copy / ".teacher.onnx.bm9h20or.tmp", run_copy / "plots" / ".latency.png.a1b2c3d4.tmp"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    kept = [run_copy / ".notes.tmp", run_copy / "mine.tmp"]  # not the product's pattern: the user's
    for path in kept:
        path.write_text("mine")
    outside = tmp_path / ".x.onnx.abcdefgh.tmp"
    outside.write_bytes(b"")
    (run_copy / "linked").symlink_to(tmp_path)
    with RunDir(run_copy).lock():
        assert not any(p.exists() for p in left)
    assert all(p.read_text() == "mine" for p in kept) and outside.exists()


def test_a70_a2_a_refused_student_init_says_nothing_of_loading_first(tmp_path, capsys):
    """A torchvision RGB resnet18 for a gray 3-class student printed "the head is replaced ..., the
    rest is loaded", then refused the stem, naming the student's key only (70th audit A2)."""
    import torch

    from distill_export.errors import CheckpointError
    from distill_export.nets.student_init import init_student
    from distill_export.nets.students import create_student

    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "tv18.pt")
    gray = create_student("resnet18", 3, 1, 32)
    with pytest.raises(CheckpointError, match=r"conv1\.weight \(the student's backbone\.0\.weight\) has shape"):
        init_student(gray, tmp_path / "tv18.pt", "resnet18")
    out = capsys.readouterr()
    assert "the rest is loaded" not in out.out + out.err


@pytest.mark.parametrize(("text", "key", "precision"), [
    ("validate:\n  int8_agreement: 0.5\n", "int8_agreement", "int8"),
    ("validate:\n  int8_max_accuracy_drop: 0.5\n", "int8_max_accuracy_drop", "int8"),
    ("validate:\n  fp16_agreement: 0.2\n", "fp16_agreement", "fp16"),
])
def test_a71_b1_a_gate_for_a_precision_no_format_makes_is_refused(tmp_path, text, key, precision):
    """`validate: {int8_agreement: 0.5}` in a --config with onnx alone was recorded and never judged."""
    from _cli_checks import refused_config
    from distill_export.cli.options import load

    line, _ = refused_config(tmp_path, text)
    assert line == (f"error: validate.{key} judges {precision} exports, but export.formats (onnx) makes none; add "
                    f"the {precision} format or drop validate.{key}"), line
    config = tmp_path / "ok.yaml"
    config.write_text(text + f"export:\n  formats: [onnx, onnx-{precision}]\n")
    assert load(None, config, {}).export.formats == ["onnx", f"onnx-{precision}"]


def test_a71_a1_a_teacher_checkpoint_as_student_init_is_named_as_one(run_copy):
    from typer.testing import CliRunner

    from _cli_checks import one_line_error, snapshot
    from distill_export.cli import app

    before = snapshot(run_copy)
    teacher = run_copy / "teacher.pt"
    line = one_line_error(CliRunner().invoke(app, ["distill", str(run_copy), "--student-init", str(teacher),
                                                   "--epochs", "1"]))
    assert line == f"error: --student-init {teacher} is a distill-export teacher checkpoint, not a student's " \
                   "weights: give a run's student.pt (or baseline.pt) or a state_dict", line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(("text", "says"), [
    ("distill:\n  teacher_cache: false\n  teacher_cache_dir: cache9\n",
     "error: distill.teacher_cache_dir cache9 is never used here: distill.teacher_cache is false (no cache); drop "
     "distill.teacher_cache_dir or set distill.teacher_cache true"),
    ("device: cpu\ndata:\n  pin_memory: 'true'\n",
     "error: data.pin_memory true pins batches for their copy to a GPU, but this run trains on the CPU (device cpu), "
     "where torch ignores it; drop data.pin_memory (auto pins on CUDA)"),
    ("data:\n  num_workers: -1\n", "error: data.num_workers must be >= 0, got -1"),
    ("data:\n  stream_above_mb: -5\n", "error: data.stream_above_mb must be >= 0, got -5"),
    ("data:\n  persistent_workers: false\n",
     "error: data.persistent_workers false sets whether DataLoader workers stay alive between epochs, but "
     "data.num_workers is 0 (no workers); drop data.persistent_workers or set data.num_workers"),
])
def test_a72_b1_b4_a3_a4_settings_that_cannot_apply_are_refused_naming_the_key(tmp_path, text, says):
    from _cli_checks import refused_config

    line, _ = refused_config(tmp_path, text)
    assert line == says, line


def test_a72_b3_a5_a_cache_folder_inside_a_run_is_refused(tiny_run, tmp_path):
    """`teacher_cache_dir: r5/teacher_outputs` wrote into another run's cache, which that run then
    refused as "not a cache made by distill-export" (72nd audit B3, A5)."""
    from distill_export.errors import ConfigError
    from distill_export.preflight import check_cache_dir

    for inside in (tiny_run, tiny_run / "teacher_outputs", tiny_run / "new" / "deeper"):
        with pytest.raises(ConfigError, match=rf"is inside the run directory {tiny_run}, whose folders are its own"):
            check_cache_dir(str(inside))
    check_cache_dir(str(tmp_path / "cache"))  # outside every run


def test_a72_a1_a_rank_ended_by_sigterm_is_said_so(tmp_path):
    from distill_export import rank_errors

    (tmp_path / rank_errors.AGENT).write_text('{"rank": 1, "exitcode": 143}')
    assert rank_errors.summary(tmp_path, 2, 1)[0] == ("rank 1 of 2 failed with exit code 143 (SIGTERM: it was "
                                                      "terminated); its output is above")


def test_a72_b2_a_dataloader_worker_killed_after_a_signal_prints_no_traceback():
    """SIGTERM to a `--nproc 2` run with DataLoader workers: each rank printed torch's "DataLoader
    worker (pid N) is killed by signal: Terminated" traceback (a weakref finalizer's, through
    sys.excepthook) before the one line (72nd audit B2)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        from distill_export import interrupts
        interrupts.install()
        killed = RuntimeError("DataLoader worker (pid 5) is killed by signal: Terminated. ")
        sys.excepthook(RuntimeError, killed, None)  # before any signal: printed
        try:
            interrupts.raise_terminated(15, None)
        except KeyboardInterrupt:
            pass
        sys.excepthook(RuntimeError, killed, None)  # after SIGTERM: the signal's, already said
        sys.excepthook(ValueError, ValueError("other"), None)  # anything else: printed
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stderr.count("is killed by signal") == 1 and "ValueError: other" in done.stderr, done.stderr


def test_a74_b1_a3_a_link_into_a_run_or_an_empty_cache_folder_is_refused(tiny_run, tmp_path):
    from distill_export.errors import ConfigError
    from distill_export.preflight import check_cache_dir

    link = tmp_path / "lnk_cache"
    link.symlink_to(tiny_run / "teacher_outputs")
    with pytest.raises(ConfigError, match=r"is inside the run directory .*, whose folders are its own"):
        check_cache_dir(str(link))
    with pytest.raises(ConfigError, match=r"^distill.teacher_cache_dir is empty; give a folder, or leave it unset"):
        check_cache_dir("")


def test_a74_b2_a1_a2_write_coco_results_refuses_what_it_cannot_write_whole(tmp_path):
    """Scores or classes shorter than the boxes were cut by zip (2 of 6 detections written); other
    bad arguments were raw TypeErrors; min_score NaN wrote [] (74th audit B2, A1, A2)."""
    from distill_export.data.coco import write_coco_results

    boxes = np.zeros((2, 3, 4))
    boxes[..., 2:] = 5
    scores, classes = np.ones((2, 3)), np.zeros((2, 3))
    out = tmp_path / "x.json"
    for args, says in [
        ((boxes, scores, np.zeros((2, 1)), [1, 2], [7]), r"classes must be \(N, K\) = \(2, 3\)"),
        ((boxes, np.ones((1, 1)), classes, [1, 2], [7]), r"scores must be \(N, K\) = \(2, 3\)"),
        ((boxes[0], scores, classes, [1, 2], [7]), r"boxes must be \(N, K, 4\)"),
        ((boxes, scores, classes, [None, 2], [7]), r"image id None is not a whole number or a string"),
        ((boxes, scores, classes, [float("inf"), 2], [7]), r"image id inf is not"),
        ((boxes, scores, classes, [1, 2], ["x"]), r"category id 'x' is not a whole number$"),
    ]:
        with pytest.raises(ValueError, match=says):
            write_coco_results(out, *args)
    with pytest.raises(ValueError, match=r"min_score must be a finite number, got nan"):
        write_coco_results(out, boxes, scores, classes, [1, 2], [7], min_score=float("nan"))
    assert not out.exists()
    import json

    write_coco_results(out, boxes, scores, classes, [1, "b"], [7])
    assert len(json.loads(out.read_text())) == 6


def test_a73_b1_modality_dropout_beside_a_loaded_teacher_is_refused(tiny_run, tmp_path, monkeypatch):
    """A loaded teacher trains nothing that drops a modality (the control sees the student's alone,
    round-2 experts one each), yet teacher.modality_dropout 0.2 was recorded (73rd audit B1)."""
    from typer.testing import CliRunner

    from _byo_fixtures import make_manifest
    from distill_export.cli import app
    from test_audit31 import _refused

    monkeypatch.chdir(tmp_path)
    manifest = make_manifest(tmp_path / "m", per_class=6, modalities=("image", "audio"))
    (tmp_path / "md.yaml").write_text("teacher:\n  modality_dropout: 0.2\n")
    said = _refused(CliRunner().invoke(app, ["run", "--data", str(manifest), "--teacher", str(tiny_run / "teacher.pt"),
                                             "--config", "md.yaml", "--out", "r", "--epochs", "1"]))
    assert said.startswith("error: teacher.modality_dropout 0.2 cannot apply: --teacher ") and said.endswith(
        "each see one modality, with none to drop; drop teacher.modality_dropout"), said
    assert not (tmp_path / "r").exists()


def test_a73_a1_invalid_yaml_is_told_with_where_the_parser_stopped(tmp_path):
    from _cli_checks import refused_config

    line, config = refused_config(tmp_path, "distill:\n  epochs: 1\n distill:\n")
    assert line == (f"error: config {config} is not valid YAML at line 3, column 2: while parsing a block mapping: "
                    "expected <block end>, but found '<block mapping start>'"), line


@pytest.mark.parametrize(("text", "says"), [
    ("profile:\n  batches: [1, 1]\n", "error: profile.batches names 1 twice; each is measured once"),
    ("validate:\n  batch_sizes: [4, 2, 4]\n", "error: validate.batch_sizes names 4 twice; each is measured once"),
])
def test_a75_a1_a_value_named_twice_in_a_measured_list_is_refused(tmp_path, text, says):
    """`profile: {batches: [1, 1]}` kept [1, 1] in config.yaml beside [1] in report.json (75th audit A1)."""
    from _cli_checks import refused_config

    line, _ = refused_config(tmp_path, text)
    assert line == says, line


def test_a75_a1_a_flag_value_named_twice_is_refused(run_copy, tmp_path):
    from typer.testing import CliRunner

    from _cli_checks import one_line_error
    from distill_export.cli import app

    line = one_line_error(CliRunner().invoke(app, ["profile", str(run_copy), "--batch", "1,1", "--out",
                                                   str(tmp_path / "p")]))
    assert line.endswith("1 is named twice in '1,1'; each is measured once"), line
    assert not (tmp_path / "p").exists()
