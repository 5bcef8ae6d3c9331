"""Thirty-sixth round (issue 24): what the thirty-fifth fresh audit found."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error
from test_audit31 import _refused
from distill_export.cli import app
from distill_export.errors import ConfigError, DataError

runner = CliRunner()

UNSAFE = ("allow_pickle", "pickle.load", "weights_only", "unsafely")


# ----- B1: a file that is not an .npz never earns advice to unpickle it ---------------------------


@pytest.mark.parametrize("loader", ["load_parity_data", "load_teacher_parity_data"])
def test_a35_b1_a_text_file_as_parity_data_is_named_without_unsafe_advice(tmp_path, loader):
    """numpy's message claimed the 6-byte text file held pickled data and suggested `allow_pickle=`
    or `pickle.load()` (the np.load form of weights_only=False)."""
    from distill_export import validate

    path = tmp_path / "parity_data.npz"
    path.write_text("hello\n")
    with pytest.raises(DataError) as caught:
        getattr(validate, loader)(path)
    message = str(caught.value)
    assert "is not readable parity data (it is not a NumPy .npy or .npz file)" in message, message
    assert not any(word in message for word in UNSAFE), message


def test_a35_b1_an_npz_of_object_arrays_is_named_as_never_loaded(tmp_path):
    from distill_export import validate

    path = tmp_path / "parity_data.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), labels=np.zeros(1), reference=np.zeros((1, 2)))
    with pytest.raises(DataError, match=r"holds object arrays \(pickled Python objects\), which are never loaded"):
        validate.load_parity_data(path)


@pytest.mark.parametrize(("message", "kept"), [
    ("x.npz is not readable (This file contains pickled (object) data. If you trust the file you can load it "
     "unsafely using the `allow_pickle=` keyword argument or `pickle.load()`.); re-run export",
     "x.npz is not readable (This file contains pickled (object) data.)"),
    ("cannot load a.pt: Weights only load failed. Re-running torch.load with weights_only set to False will likely "
     "succeed, but it can result in arbitrary code execution.", "cannot load a.pt: Weights only load failed."),
    ("a plain message. Nothing to cut.", "a plain message. Nothing to cut."),
])
def test_a35_b1_the_error_line_never_carries_a_librarys_unsafe_advice(message, kept):
    """The backstop in cli/guard for any message a loader did not rewrite itself."""
    from distill_export.cli.guard import without_unsafe_advice

    assert without_unsafe_advice(message) == kept


# ----- B2: tune.json's teachers are checked like the rest of it ------------------------------------


def _summary(teachers) -> dict:
    return {"decision": {"distill": True, "method": "hinton", "line": "hinton chosen", "teacher_fusion": "late",
                         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]},
            "trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0, "baseline_val_accuracy": 0.5, "best": None,
            "teachers": teachers}


@pytest.mark.parametrize(("teachers", "why"), [
    ({"concat": {"own": True, "val_score": "high"}, "late": {"val_score": 0.4}}, "teachers.concat.val_score"),
    ({"concat": {"own": True, "val_score": 0.5}, "late": ["x"]}, "teachers.late"),
    ({"concat": {"own": True, "val_score": 7.0}, "late": {"val_score": 0.4}}, "teachers.concat.val_score"),
])
def test_a35_b2_a_tune_json_with_bad_teachers_is_refused_on_resume(tmp_path, teachers, why):
    """A string score ran every stage, then the report stage died on `:.1f` (a traceback, exit 1)."""
    from distill_export.config import RunConfig
    from distill_export.tune_record import resumed_summary

    path = tmp_path / "tune.json"
    path.write_text(json.dumps(_summary({"concat": {"own": True, "val_score": 0.5}, "late": {"val_score": 0.4}})))
    assert resumed_summary(path, RunConfig())["teachers"]["late"]["val_score"] == 0.4  # what tune writes
    path.write_text(json.dumps(_summary(teachers)))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    assert str(caught.value).startswith(f"{path} is not the tune.json tune wrote (") and why in str(caught.value)


def test_a35_b2_report_json_with_a_bad_teacher_entry_is_refused_on_load():
    """A hand-edited report.json `tune.teachers` was an AttributeError traceback from `report RUN`."""
    from distill_export.record import migrate
    from distill_export.record.migrate import RecordError
    from distill_export.tasks.report_view import tune_sentence

    with pytest.raises(RecordError, match=r"tune\.teachers\.late: Input should be a valid dictionary"):
        migrate({"tune": _summary({"concat": {"own": True, "val_score": 0.5}, "late": ["x"]})})
    record = migrate({"tune": _summary({"concat": {"own": True, "val_score": 0.5}, "late": {"val_score": 0.4}})})
    assert "(the teachers' own validation scores: concat 50.0% (the run's), late 40.0%)" in tune_sentence(record)


# ----- B3, B4: a COCO image id is written back as the file gives it --------------------------------


def _image_ids(tmp_path, new_id):
    from test_audit32 import _load_coco

    def edit(coco):
        old = coco["images"][-1]["id"]
        coco["images"][-1]["id"] = new_id
        for a in coco["annotations"]:
            if a["image_id"] == old:
                a["image_id"] = new_id
    data = _load_coco(tmp_path, edit)
    return [i for ids in data.info["coco"]["image_ids"].values() for i in ids]


@pytest.mark.parametrize("new_id", ["007", "\u00b2", "--5", "-0", 9.0, "img-9"])
def test_a35_b3_b4_coco_image_ids_come_back_as_the_file_gives_them(tmp_path, new_id):
    """"007" became 7 (no image in a COCO evaluator), "\u00b2" and "--5" a ValueError traceback."""
    ids = _image_ids(tmp_path, new_id)
    expected = int(new_id) if isinstance(new_id, float) else new_id
    assert expected in ids and all(type(i) is int for i in ids if i != expected), ids  # the others: ints, as given


@pytest.mark.parametrize("new_id", [float("nan"), 2.5, float("inf")])
def test_a35_b4_a_coco_image_id_no_results_file_can_hold_is_refused(tmp_path, new_id):
    with pytest.raises(DataError, match=r"images\[\d+\] has the id .*, not a whole number or a string"):
        _image_ids(tmp_path, new_id)


# ----- B5, B6: a FIFO where a file is read is named, never waited on -------------------------------


def test_a35_b5_a_fifo_as_config_is_refused_at_once(tmp_path):
    """`run --config FIFO` (and kd_gain.py --config) blocked for ever in read_yaml."""
    import os

    from distill_export.config import read_yaml

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match=r"^config .*fifo is not a regular file \(a FIFO\)$"):
        read_yaml(tmp_path / "fifo")
    with pytest.raises(ConfigError, match=r"^config /dev/zero is not a regular file \(a character device\)$"):
        read_yaml("/dev/zero")


def test_a35_b6_a_fifo_as_a_run_file_is_refused_at_once(tmp_path):
    """A FIFO state.json hung every stage command; a FIFO instances.json was 'does not exist'."""
    import os

    from distill_export.data.coco import _load
    from distill_export.record.store import read_json

    os.mkfifo(tmp_path / "state.json")
    with pytest.raises(ConfigError, match=r"state.json is not a regular file \(a FIFO\)$"):
        read_json(tmp_path / "state.json")
    os.mkfifo(tmp_path / "instances.json")
    with pytest.raises(ConfigError, match=r"^COCO annotation file .*instances.json is not a regular file \(a FIFO\)$"):
        _load(tmp_path / "instances.json")


# ----- the arguable cases mended: A1, A3, A4, A5 --------------------------------------------------


def test_a35_a1_a_control_character_in_report_html_is_shown_as_an_escape():
    """An ESC byte in a class name reached report.html raw (`cat report.html` recoloured the terminal)."""
    from distill_export.record.format import html_table

    table = html_table(["class"], [["b\x1b[31mRED <i>"]])
    assert "\x1b" not in table and "b\\x1b[31mRED &lt;i&gt;" in table, table


def test_a35_a3_a_csv_cell_over_the_csv_limit_is_a_bad_row_named_by_line(tmp_path):
    """A 1 MB cell refused the whole manifest in csv's words ('field larger than field limit'),
    with no line number and no way to skip it."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.csv"
    path.write_text("image,label\na.png,1\n" + "x" * 200_000 + ".png,2\nc.png,3\n")
    _, _, rows, problems = read_rows(path)
    assert [r.line for r in rows] == [2, 4]
    assert [(p.line, p.message) for p in problems] == [
        (3, "cannot be read as CSV (field larger than field limit (131072))")]


def test_a35_a4_coco_results_leave_out_non_finite_detections(tmp_path):
    from distill_export.data.coco import write_coco_results

    boxes = np.array([[[1.0, 2, 5, 6], [0, 0, np.inf, 3], [1, 1, 2, 2]]])
    path = write_coco_results(tmp_path / "r.json", boxes, np.array([[0.9, 0.8, np.nan]]), np.zeros((1, 3)), ["i"], [7])
    assert json.loads(path.read_text()) == [{"image_id": "i", "category_id": 7, "bbox": [1.0, 2.0, 4.0, 4.0],
                                             "score": 0.9}]


def test_a35_a5_a_tool_refusing_a_run_folder_does_not_advise_run_resume(tmp_path, capsys):
    from distill_export.output_paths import check_tool_output

    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(SystemExit) as caught:
        check_tool_output(tmp_path, folder=True)
    line = capsys.readouterr().err.strip()
    assert caught.value.code == 2 and line == f"error: --out {tmp_path} already holds a run; choose a new --out or delete it"


def test_a35_b7_a_user_folder_holding_a_config_yaml_is_not_called_a_run(tmp_path):
    """Called 'already holds a run ... continues with run --resume', which then said it is no run."""
    from distill_export.output_paths import check_free

    (tmp_path / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"is not empty and is not a run directory \(1 entries: 'config.yaml'\)"):
        check_free(tmp_path)
    (tmp_path / "config.yaml").unlink()
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds the start of a run that never wrote its config.yaml; delete it"):
        check_free(tmp_path)


def test_a35_a2_a_fifo_in_place_of_a_run_file_or_folder_is_said_as_such(run_copy):
    """A FIFO student.onnx was "missing"; a FIFO plots/ was "cannot write plots/latency_vs_batch.png: File exists"."""
    import os

    (run_copy / "student.onnx").rename(run_copy.parent / "kept.onnx")
    os.mkfifo(run_copy / "student.onnx")
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]))
    assert line == f"error: {run_copy}/student.onnx is not a regular file (a FIFO)", line
    (run_copy.parent / "kept.onnx").replace(run_copy / "student.onnx")
    shutil.rmtree(run_copy / "plots", ignore_errors=True)
    os.mkfifo(run_copy / "plots")
    assert one_line_error(runner.invoke(app, ["report", str(run_copy)])) == (
        f"error: {run_copy}/plots is not a folder; the run writes its files into a folder there: remove it and run "
        "the command again")


def test_a35_b1_b6_validate_on_a_text_parity_file_or_a_fifo_state_json_isone_line_error(run_copy):
    import os

    (run_copy / "parity_data.npz").write_text("hello\n")
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]))
    assert "parity_data.npz is not readable parity data (it is not a NumPy .npy or .npz file)" in line, line
    (run_copy / "state.json").unlink()
    os.mkfifo(run_copy / "state.json")
    assert one_line_error(runner.invoke(app, ["validate", str(run_copy)])) == \
        f"error: {run_copy}/state.json is not a regular file (a FIFO)"



# ----- the thirty-sixth audit -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["report"], ["export", "--format", "onnx"], ["validate"], ["run", "--resume"]])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a36_b1_b3_report_json_that_is_a_fifo_or_a_folder_is_said_as_such(run_copy, command, kind):
    """`report` called a FIFO report.json "missing" and advised a new run; `run --resume` said "no
    report.json"; a folder there was "Is a directory ('4')", naming no file."""
    import os

    (run_copy / "report.json").unlink()
    os.mkfifo(run_copy / "report.json") if kind == "fifo" else (run_copy / "report.json").mkdir()
    args = [*command, str(run_copy)] if command[0] == "run" else [command[0], str(run_copy), *command[1:]]
    line = one_line_error(runner.invoke(app, args))
    what = "a FIFO" if kind == "fifo" else "a directory"
    assert line == f"error: {run_copy}/report.json is not a regular file ({what})", (args, line)


def test_a36_a1_a_fifo_index_json_in_the_teacher_cache_is_said_as_such(tmp_path):
    """Was "holds 'index.json', which the teacher-output cache does not write" (its own file name)."""
    import os

    from distill_export.teacher_cache import INDEX_FILE, check_own_folder

    os.mkfifo(tmp_path / INDEX_FILE)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/{INDEX_FILE} is not a regular file \(a FIFO\)$"):
        check_own_folder(tmp_path)


def test_a36_a2_a3_a_gate_given_twice_is_refused_and_minus_zero_is_zero():
    from distill_export.tasks import get_task
    from distill_export.validate import parse_gate_flags

    task = get_task("classification")
    with pytest.raises(ConfigError, match=r"^--gate fp32_max_abs is given twice \(0.001 and 0.01\); give it once$"):
        parse_gate_flags(["fp32_max_abs=1e-3", "fp32_max_abs=1e-2"], task)
    assert parse_gate_flags(["fp32_max_abs=1e-3", "fp32_max_abs=0.001"], task) == {"validate.fp32_max_abs": 1e-3}
    gate = parse_gate_flags(["int8_max_accuracy_drop=-0"], task)["validate.int8_max_accuracy_drop"]
    assert gate == 0 and str(gate) == "0.0"


# ----- the thirty-seventh audit -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command"), [("teacher.onnx", "profile"), ("teacher_parity_data.npz", "validate"),
                                               ("latency.csv", "report"), ("report.md", "report")])
def test_a37_b1_b3_any_run_file_that_is_a_folder_is_named_by_every_command(run_copy, name, command):
    """A FIFO or folder teacher.onnx was "removed after validate"; teacher_parity_data.npz "missing"
    (a warning, exit 0); a folder latency.csv "Is a directory ('.latency.csv.t8y1eyr7.tmp')"."""
    (run_copy / name).unlink()
    (run_copy / name).mkdir()
    assert one_line_error(runner.invoke(app, [command, str(run_copy)])) == \
        f"error: {run_copy}/{name} is not a regular file (a directory)"


def test_a37_b3_a_write_over_a_folder_names_the_file_not_the_temporary_one(tmp_path):
    from distill_export.files import write_text

    (tmp_path / "plot.png").mkdir()
    with pytest.raises(ConfigError, match=rf"^cannot write {tmp_path}/plot.png: Is a directory$"):
        write_text(tmp_path / "plot.png", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left


def test_a37_a2_a3_a_null_annotation_or_a_key_given_twice_in_a_coco_file_is_named(tmp_path):
    """null was "annotation id None: image_id None is not among the file's images"; a second
    "images" key won in silence and the annotations were blamed."""
    from test_audit32 import _load_coco

    with pytest.raises(DataError, match=r"instances.json: annotations\[0\] is null, not an object$"):
        _load_coco(tmp_path / "a", lambda c: c["annotations"].__setitem__(0, None))
    with pytest.raises(DataError, match=r"cannot read COCO annotation file .*instances.json: the key 'images' is "
                                        r"given twice in one object"):
        _load_coco(tmp_path / "b", lambda c: json.dumps(c)[:-1] + ', "images": []}')


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a37_b4_a_full_disk_while_exporting_is_the_disk_not_the_exporter(tmp_path, exporter):
    """Was "cannot export student ... torchscript: [Errno 28] No space left on device; try a higher
    --opset or the dynamo exporter": advice that cannot help. Here the full disk is an exporter's
    error that keeps only the text (as torch's C++ writer does)."""
    from distill_export.export.base import ExportOptions
    from distill_export.export.onnx import _torch_export
    from distill_export.files import atomic_path

    class WritesToAFullDisk(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("PytorchStreamWriter failed writing file: [Errno 28] No space left on device")

    final = tmp_path / "student.onnx"
    with pytest.raises(ConfigError, match=rf"^cannot write {final}: no space left on the device; free some space"):
        with atomic_path(final) as tmp:
            _torch_export(WritesToAFullDisk(), torch.zeros(2, 3), tmp, "x", ExportOptions(exporter=exporter), "m")
    assert list(tmp_path.iterdir()) == []


def _tool_decorator():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from toolargs import one_line_errors

    return one_line_errors


@pytest.mark.parametrize("existed", [False, True])
def test_a37_b6_a_data_tool_on_a_full_disk_is_one_line_and_leaves_its_out_as_it_was(tmp_path, capsys, existed):
    """make_moving_digits on a full disk: a 19-line traceback (exit 1) and four .mkv files left
    behind with no manifest, so the same command run again was refused as 'not empty'."""
    import errno

    from distill_export.output_paths import check_tool_output

    out = tmp_path / "md"
    if existed:
        out.mkdir()

    @_tool_decorator()
    def generate():
        target = check_tool_output(out, folder=True, remove_on_failure=True)
        (target / "clips").mkdir(parents=True)
        (target / "clips" / "00000.mkv").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(target / "clips" / "00001.mkv"))

    with pytest.raises(SystemExit) as caught:
        generate()
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: No space left on device ({out}/clips/00001.mkv)"
    assert (list(out.iterdir()) == []) if existed else not out.exists()


def test_a37_b5_profile_out_on_a_full_disk_leaves_nothing_behind(tmp_path):
    """profile --out left profile.json and latency.csv without profile.html, and its advised
    retry was refused as 'not empty'."""
    import errno

    from distill_export.output_paths import check_output, removed_on_failure

    out = check_output(tmp_path / "p", folder=True)
    with pytest.raises(OSError), removed_on_failure(out):
        out.mkdir()
        (out / "profile.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not out.exists()
    check_output(out, folder=True)  # the same command can run again


@pytest.mark.parametrize("command", [["report"], ["tune", "--trials", "1", "-q"]])
def test_a37_a4_a38_a8_a_read_only_run_folder_is_named_before_any_work(tiny_run, tmp_path, command):
    """Was "Read-only file system ('RUN/.stage-backup')", naming an internal folder; tune ran its
    teacher-cache pass first, then failed on RUN/teacher_outputs/index.json."""
    import os
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount(8) to make a read-only file system")
    try:
        shutil.copytree(tiny_run, mount / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        assert one_line_error(runner.invoke(app, [command[0], str(mount / "run"), *command[1:]])) == (
            f"error: {mount}/run cannot be written (a read-only folder or file system); a stage command writes its "
            "results into the run directory")
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ----- the thirty-eighth audit -------------------------------------------------------------------------


class _Rows(torch.nn.Module):
    """A teacher program whose row count is not its batch's: always `rows` rows of `classes` scores."""

    def __init__(self, dims: dict[str, int], rows: int | None, classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(sum(dims.values()), classes)
        self.rows = rows

    def forward(self, image, audio):
        z = self.fc(torch.cat([image.flatten(1), audio.flatten(1)], 1))  # (B, classes)
        return z if self.rows is None else z.mean(0, keepdim=True).expand(self.rows, z.shape[1])


@pytest.mark.parametrize(("rows", "classes", "shape", "n"), [(3, 10, (3, 10), 2), (None, 7, (2, 7), 2)])
def test_a38_b1_b2_a_teacher_with_the_wrong_rows_or_classes_is_refused_naming_its_shape(
        tiny_run, tiny_config_file, tmp_path, rows, classes, shape, n):
    """A program that always returned 3 rows passed (its class count was right) and was an
    IndexError traceback in the metrics; a wrong class count said "for 2 rows" of a 3-row batch."""
    shapes = torch.load(tiny_run / "teacher.pt", weights_only=True)["meta"]["input_shapes"]
    example = {m: torch.randn(4, *s) for m, s in sorted(shapes.items())}
    dims = {m: int(torch.tensor(s).prod()) for m, s in shapes.items()}
    program = torch.export.export(_Rows(dims, rows, classes), (), example,
                                  dynamic_shapes={m: {0: torch.export.Dim("b")} for m in example})
    torch.export.save(program, str(tmp_path / "t.pt2"))
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher",
                                         str(tmp_path / "t.pt2"), "--out", str(tmp_path / "t"), "-q"]))
    assert line.startswith(f"error: teacher {tmp_path}/t.pt2 returns logits of shape {shape} for {n} rows; it must "
                           f"return ({n}, 10): one score per class for each row"), line
    assert not (tmp_path / "t").exists()


def test_a38_b3_a_jsonl_caption_with_a_lone_surrogate_is_a_bad_row(tmp_path):
    """"the \\ud800 meow" was a UnicodeEncodeError traceback from the text hashing."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "text": "the \\ud800 meow", "label": "cat"}\n'
                    '{"image": "b.png", "text": "a dog", "label": "dog"}\n')
    _, _, rows, problems = read_rows(path)
    assert [r.line for r in rows] == [2]
    assert [(p.line, p.message) for p in problems] == [
        (1, "field 'text' holds '\\ud800', a lone surrogate escape that is no character")]


def test_a38_b4_a_text_encoder_on_data_without_text_is_refused(tmp_path):
    """config.yaml and report.json named wordllama (not even installed) for data with no text."""
    from _byo_fixtures import make_manifest
    from test_audit31 import _refused

    manifest = make_manifest(tmp_path / "d", modalities=("image", "audio"))
    (tmp_path / "wl.yaml").write_text("data:\n  text_encoder: wordllama\n")
    line = _refused(runner.invoke(app, ["train-teacher", "--data", str(manifest), "--config",
                                                   str(tmp_path / "wl.yaml"), "--out", str(tmp_path / "t"), "-q"]))
    assert line == ("error: data.text_encoder=wordllama applies to text columns, and the data has none (modalities: "
                    "audio, image); drop the setting"), line
    assert not (tmp_path / "t").exists()


def test_a38_b5_the_smallest_label_fraction_named_is_the_smallest_taken():
    """"the smallest fraction that keeps 3 rows (one per class) is 0.25: pass at least that", yet
    0.042 of 12 rows ran (it rounds to one row; the one-per-class floor keeps 3)."""
    from distill_export.data.dataset import check_fraction_keeps

    with pytest.raises(ConfigError, match=r"the smallest fraction it takes is 0.0417, and any fraction keeps at least "
                                          r"3 rows \(one per class\): pass at least that"):
        check_fraction_keeps(0.04, 12, 3, "one per class")
    check_fraction_keeps(0.0417, 12, 3, "one per class")  # taken, as the message says
    with pytest.raises(ConfigError, match=r"the smallest fraction it takes is 0.0501,"):
        check_fraction_keeps(0.05, 10, 2, "one per class")  # half a row rounds to 0
    check_fraction_keeps(0.0501, 10, 2, "one per class")


def test_a38_b6_a_pt2_program_as_student_init_is_named_as_such(tmp_path):
    """Was "not a readable state_dict: PytorchStreamReader failed locating file data.pkl ... your
    checkpoint file is corrupted", cut mid-word: a sound file blamed."""
    from distill_export.errors import CheckpointError
    from distill_export.nets.checkpoint import read_state_file

    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    torch.export.save(program, str(tmp_path / "p.pt2"))
    with pytest.raises(CheckpointError) as caught:
        read_state_file(tmp_path / "p.pt2", "--student-init p.pt2")
    assert str(caught.value) == ("--student-init p.pt2 is a torch.export program (.pt2), not a state_dict: it takes "
                                 "weights (a .pt state_dict or .safetensors file); a .pt2 can be a --teacher")


def test_a38_a7_a_null_coco_image_or_category_is_named_as_null(tmp_path):
    from test_audit32 import _load_coco

    with pytest.raises(DataError, match=r"instances.json: images\[0\] is null, not an object$"):
        _load_coco(tmp_path / "a", lambda c: c["images"].__setitem__(0, None))
    with pytest.raises(DataError, match=r"instances.json: categories\[0\] is null, not an object$"):
        _load_coco(tmp_path / "b", lambda c: c["categories"].__setitem__(0, None))



# ----- the thirty-ninth audit -------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "why"), [
    ("image,caption.en,label,split", "it holds '.', which separates the parts of a model's layer names"),
    ("image, ,label,split", "it is empty"),
])
def test_a39_b1_b4_a_column_name_that_cannot_name_a_modality_is_refused(tmp_path, header, why):
    """"caption.en" (CSV) or "" and "\\ud800" (JSONL keys) were KeyError or UnicodeEncodeError
    tracebacks when the teacher was built, and under --nproc 2 one per rank."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.csv"
    path.write_text(header + "\na.png,a cat,cat,train\n")
    column = header.split(",")[1].strip()
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"manifest {path}: the column {column!r} cannot name a modality: {why}; rename it"


def test_a39_b1_a_jsonl_key_with_a_lone_surrogate_is_refused(tmp_path):
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "\\ud800": "1", "label": "cat"}\n')
    with pytest.raises(DataError, match=r"the column '\\ud800' cannot name a modality: it holds a lone surrogate"):
        read_rows(path)


def test_a39_b5_a_jsonl_integer_of_5000_digits_is_a_bad_row(tmp_path):
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "label": ' + "9" * 5000 + '}\n{"image": "b.png", "label": "dog"}\n')
    _, _, rows, problems = read_rows(path)
    assert [r.line for r in rows] == [2] and [p.line for p in problems] == [1]
    assert problems[0].message.startswith("not readable JSON: Exceeds the limit (4300 digits)"), problems[0].message


class _CastLogits(torch.nn.Module):
    def __init__(self, dims: dict[str, int], dtype: torch.dtype):
        super().__init__()
        self.fc = torch.nn.Linear(sum(dims.values()), 10)
        self.dtype = dtype

    def forward(self, image, audio):
        return self.fc(torch.cat([image.flatten(1), audio.flatten(1)], 1)).to(self.dtype)  # (B, 10)


@pytest.mark.parametrize(("dtype", "name"), [(torch.int64, "int64"), (torch.bfloat16, "bfloat16")])
def test_a39_a4_a40_b4_a_teacher_with_integer_or_bfloat16_outputs_is_refused(tiny_run, tiny_config_file, tmp_path,
                                                                             dtype, name):
    """int64 was taken in silence; bfloat16 ran four stages, then profile failed: ONNX Runtime has
    no numpy type for it."""
    shapes = torch.load(tiny_run / "teacher.pt", weights_only=True)["meta"]["input_shapes"]
    example = {m: torch.randn(4, *s) for m, s in sorted(shapes.items())}
    dims = {m: int(torch.tensor(s).prod()) for m, s in shapes.items()}
    program = torch.export.export(_CastLogits(dims, dtype), (), example,
                                  dynamic_shapes={m: {0: torch.export.Dim("b")} for m in example})
    torch.export.save(program, str(tmp_path / "t.pt2"))
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher",
                                         str(tmp_path / "t.pt2"), "--out", str(tmp_path / "t"), "-q"]))
    assert line == (f"error: teacher {tmp_path}/t.pt2 returns {name} outputs; a teacher returns float32, float16 or "
                    "float64 scores, one per class"), line



# ----- the fortieth audit (short) --------------------------------------------------------------------------


@pytest.mark.parametrize(("column", "why"), [
    ("training", "it is the name of an attribute of a PyTorch module"),
    ("forward", "it is the name of an attribute of a PyTorch module"),
    ("img/x", "it holds a path separator, and file names are made from it"),
    ("logits", "an exported model's outputs are named logits, heads, boxes, scores, classes"),
])
def test_a40_b1_b6_b8_a_column_that_would_break_a_model_or_a_file_name_is_refused(tmp_path, column, why):
    """'training' was a KeyError traceback (nn.ModuleDict), 'img/x' a ValueError from a checkpoint's
    file name, 'logits' an ONNX export that recursed (and advised a higher opset)."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.csv"
    path.write_text(f"{column},label\na.png,cat\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"manifest {path}: the column {column!r} cannot name a modality: {why}; rename it"


def test_a40_b2_b3_b5_jsonl_keys_are_stripped_and_huge_float_labels_refused(tmp_path):
    """"image " beside "image" made two modalities, "label " a text input holding the label; the
    label 9007199254740993.0 became 9007199254740992, merged with another class."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "image ": "a.png", "label": "cat"}\n'
                    '{"image": "b.png", "label ": "dog"}\n'
                    '{"image": "c.png", "label": 9007199254740993.0}\n'
                    '{"image": "d.png", "label": "owl"}\n')
    modalities, _, rows, problems = read_rows(path)
    assert modalities == ["image"] and [(r.line, r.label) for r in rows] == [(2, "dog"), (4, "owl")]
    assert [p.line for p in problems] == [1, 3]
    assert problems[0].message == "two fields name the column 'image' (names are read without surrounding spaces)"
    assert problems[1].message == ("field 'label' is 9007199254740992.0, a number past 2**53, which a float does not "
                                   "hold exactly: write it as an integer or a string")


# ----- the forty-first audit ------------------------------------------------------------------------


class _CatRelu(torch.nn.Module):
    """A graph whose FX values are named cat, relu and linear (what the dynamo exporter keeps)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, *xs):
        return self.fc(torch.relu(torch.cat([x.flatten(1) for x in xs], 1)))


@pytest.mark.parametrize("names", [["relu"], ["cat", "linear"], ["distill_export_input_1", "x"]])
def test_a41_b1_b2_an_input_named_like_a_value_inside_the_graph_exports(tmp_path, names):
    """A column named `cat`, `linear` or `relu` (a value the dynamo exporter names inside the graph)
    made the ONNX check recurse: the teacher was silently not exported, and the student's export
    failed advising a higher opset. The inputs are now exported under placeholders and renamed."""
    import onnx
    import onnxruntime as ort

    from distill_export.export.base import ExportOptions
    from distill_export.export.common import finalize_onnx
    from distill_export.export.teacher_onnx import _export

    model = _CatRelu().eval()
    sample = tuple(torch.randn(2, 8 // len(names)) for _ in names)
    path = tmp_path / "m.onnx"
    assert _export(model, sample, names, path, ExportOptions()) == ("dynamo", None)
    proto = finalize_onnx(path, {}, simplify=True)
    assert [i.name for i in proto.graph.input] == names
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, sample)})[0]
    np.testing.assert_allclose(got, model(*sample).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a41_b3_a3_a4_invisible_characters_and_reserved_names_in_another_case(tmp_path):
    """`label` + U+200B became a text modality holding the label (a leak to the teacher); `Split` a
    text modality while the file's splits were ignored; `\\ufefflabel` was 'no label column' with
    the column printed as if it were `label`."""
    from distill_export.data.manifest_rows import read_rows

    cases = {
        "label\u200b": "the column 'label\\u200b' cannot name a modality: it holds a control or invisible "
                       "character (U+200B); rename it",
        "Split": "the column 'Split' cannot name a modality: it differs from the reserved column 'split' only "
                 "in case; rename it",
    }
    for key, message in cases.items():
        path = tmp_path / "m.jsonl"
        path.write_text(json.dumps({"image": "a.png", "label": "cat", key: "train"}) + "\n")
        with pytest.raises(DataError) as caught:
            read_rows(path)
        assert str(caught.value) == f"manifest {path}: {message}"
    path.write_text(json.dumps({"image": "a.png", "\ufefflabel": "cat"}) + "\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (f"manifest {path} has no 'label' column (columns: image, '\\ufefflabel'); the "
                                 "column '\\ufefflabel' holds an invisible character")


def test_a41_a1_a2_coco_results_leave_out_padding_classes_and_keep_huge_widths(tmp_path):
    """Class -1 (padding) was written as the last category; a float32 width that overflows to inf
    was a ValueError from json, with nothing written."""
    from distill_export.data.coco import write_coco_results

    boxes = np.array([[[0, 0, 5, 5], [1, 1, 4, 4], [-3e38, 0, 3e38, 5]]], "f4")
    path = write_coco_results(tmp_path / "r.json", boxes, np.array([[0.9, 0.8, 0.7]], "f4"),
                              np.array([[0, -1, 2]]), [7], [10, 20, 30])
    got = json.loads(path.read_text())
    assert [(d["category_id"], d["score"]) for d in got] == [(10, 0.9), (30, 0.7)]
    assert got[1]["bbox"][2] == pytest.approx(6e38, rel=1e-6)


# ----- the forty-second audit -----------------------------------------------------------------------


@pytest.mark.parametrize(("exporter", "name"), [
    ("dynamo", "mean_scale"),  # the INT8 quantiser's scale of the inner value `mean` (B1)
    ("dynamo", "node_linear_cast_to_logits"),  # the fp16 converter's output cast (B2)
    ("torchscript", "onnx::Conv_37"),  # a TorchScript initializer: the input became `onnx::Conv_37.1` (B3)
])
def test_a42_b1_b2_b3_every_format_keeps_an_input_named_like_a_converters_value(tmp_path, exporter, name):
    """An input (a manifest column) named like a value that the INT8 quantiser, the fp16 converter
    or the TorchScript exporter makes failed those exports (B1, B2), or was renamed while the
    metadata kept the column's name (B3). Every format now names its input as the column."""
    import onnx
    import onnxruntime as ort

    from distill_export.export import export_formats
    from distill_export.export.base import ExportOptions, ExportSource
    from test_int8_recipes import META, _DwNet

    torch.manual_seed(0)
    model = _DwNet().eval()
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    results = export_formats(ExportSource(model, {**META, "input_name": name}, "0" * 64, tmp_path, calibration=x),
                             ["onnx", "onnx-fp16", "onnx-int8"], ExportOptions(exporter=exporter))
    expected = model(torch.from_numpy(x)).detach().numpy()
    for fmt, tolerance in (("onnx", 1e-4), ("onnx-fp16", 0.05), ("onnx-int8", 0.5)):
        proto = onnx.load(results[fmt].path)
        assert [i.name for i in proto.graph.input] == [name], fmt
        assert {p.key: p.value for p in proto.metadata_props}["input_name"] == name, fmt
        got = ort.InferenceSession(results[fmt].path, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
        np.testing.assert_allclose(got, expected, atol=tolerance, err_msg=fmt)


@pytest.mark.parametrize(("column", "why"), [
    ("label\u3164", "it holds a control or invisible character (U+3164)"),  # a Hangul filler (B5)
    ("label\u2800", "it holds a control or invisible character (U+2800)"),  # the blank Braille pattern (B5)
    ("\uff4c\uff41\uff42\uff45\uff4c", "its letters spell the reserved column 'label'"),  # fullwidth (A2)
    ("\u017fplit", "its letters spell the reserved column 'split'"),  # long s (A2)
    ("a" * 201, "it is 201 bytes long, and file names are made from it (at most 200)"),  # A6
])
def test_a42_b5_a2_a6_columns_that_read_as_another_or_cannot_name_a_file(tmp_path, column, why):
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", column: "x"}) + "\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"manifest {path}: the column {column!r} cannot name a modality: {why}; rename it"


def test_a42_b6_a3_a_new_emoji_is_a_column_and_a_duplicate_header_names_its_spellings(tmp_path):
    """U+1FAE8 (Unicode 15) was 'a control or invisible character' (Python 3.11's tables call it
    unassigned); a header 'label' beside 'label\\xa0' was 'duplicate ... [image, label, label]'."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", "x\U0001FAE8": "hi"}) + "\n")
    assert read_rows(path)[0] == ["image", "x\U0001FAE8"]
    path = tmp_path / "m.csv"
    path.write_text("image,label,label\u00a0\na.png,cat,cat\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (f"{path}:1: duplicate column names in the header: 'label' is given twice, written "
                                 "'label' and 'label\\xa0' (names are read without surrounding spaces)")


def test_a42_b7_a5_coco_results_check_widths_classes_and_ids(tmp_path):
    """A float64 width past float's range was a ValueError from json with nothing written; a NaN
    class a ValueError, 0.5 category 0; one id for two images dropped the second in silence."""
    from distill_export.data.coco import write_coco_results

    boxes = np.array([[[-1e308, 0, 1e308, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 4, 4]]])
    path = write_coco_results(tmp_path / "r.json", boxes, np.array([[0.9, 0.8, 0.7, 0.6]]),
                              np.array([[0, np.nan, 0.5, 1.0]]), [7], [3, 4])
    assert json.loads(path.read_text()) == [{"image_id": 7, "category_id": 4, "bbox": [0.0, 0.0, 4.0, 4.0],
                                             "score": 0.6}]
    with pytest.raises(ValueError, match="1 image ids for 2 images"):
        write_coco_results(tmp_path / "s.json", np.zeros((2, 1, 4)), np.ones((2, 1)), np.zeros((2, 1)), [7], [3])
    assert not (tmp_path / "s.json").exists()


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _run_tool(name: str, argv: list[str], monkeypatch) -> int:
    import importlib.util
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parents[1] / "tools"
    monkeypatch.syspath_prepend(str(tools))
    spec = importlib.util.spec_from_file_location(f"tool_{name}", tools / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    return exit_.value.code


@pytest.mark.parametrize(("argv", "line"), [
    (["--device", "bogus"], "error: argument --device: invalid choice: 'bogus' (choose from 'cpu', 'cuda')"),
    (["--throughput-rows", "9"], "error: argument --throughput-rows: must be an integer >= 10, got 9"),
    pytest.param(["--device", "cuda"], "error: --device cuda: no GPU is visible here (use --device cpu)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
])
def test_a42_b4_b8_b9_bench_train_refuses_before_writing_and_never_into_the_users_folder(tmp_path, monkeypatch,
                                                                                         capsys, argv, line):
    """--device bogus was refused after 2,002 PNGs and after replacing the user's --images
    folder's manifest_N.csv; --device cuda without a GPU was a traceback; 9 rows (10 classes) was 41
    lines of bad rows in the tool's own manifest, advising --skip-bad-rows."""
    images = tmp_path / "mine"
    images.mkdir()
    (images / "manifest_20.csv").write_text("my data\n")
    code = _run_tool("bench_train", ["--images", str(images), "--skip", "memory", "workers", "--quick",
                                     "--throughput-rows", "20", "--out", str(tmp_path / "out"), *argv], monkeypatch)
    assert code == 2
    assert _one_line(capsys.readouterr().err) == line
    assert sorted(p.name for p in images.iterdir()) == ["manifest_20.csv"]
    assert (images / "manifest_20.csv").read_text() == "my data\n"


def test_a42_b4_bench_train_writes_its_manifest_outside_the_images_folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import bench_train

    (tmp_path / "manifest_10.csv").write_text("my data\n")
    (tmp_path / "scratch").mkdir()
    path = bench_train.write_manifest(tmp_path, 10, tmp_path / "scratch")
    assert path.parent == tmp_path / "scratch" and (tmp_path / "manifest_10.csv").read_text() == "my data\n"
    assert path.read_text().splitlines()[1] == f"{tmp_path.resolve()}/img/train_0.png,0,train"


@pytest.mark.parametrize(("argv", "line"), [
    (["--device", "cpu", "--amp", "bf16"],
     "error: --amp bf16 is CUDA autocast; with --device cpu both loops run fp32 (drop --amp)"),
    (["--device", "cpu", "--images", "{place}/afile"], "error: Not a directory ({place}/afile/img)"),
])
def test_a42_a1_a4_profile_host_records_what_runs_and_leaves_no_out_behind(tmp_path, monkeypatch, capsys, argv, line):
    """--amp bf16 (then the default) was recorded for loops that ran fp32 on CPU; a failure left
    the new --out folder behind, so the same command was refused next time."""
    (tmp_path / "afile").write_text("hi\n")
    argv = [a.replace("{place}", str(tmp_path)) for a in argv]
    assert _run_tool("profile_host", [*argv, "--out", str(tmp_path / "out")], monkeypatch) == 2
    assert _one_line(capsys.readouterr().err) == line.replace("{place}", str(tmp_path))
    assert not (tmp_path / "out").exists()


# ----- the forty-third audit ------------------------------------------------------------------------


def test_a43_b1_a1_a3_column_names_read_by_their_letters(tmp_path):
    """B1: `label` + U+1D159 (a symbol that draws nothing) fed the label to the teacher as text.
    A1: Persian and Hindi words spelt with a zero-width (non-)joiner were refused as invisible.
    A3: `image` beside fullwidth `ｉｍａｇｅ` were two modalities (every row then bad)."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", "label\U0001D159": "cat"}) + "\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (f"manifest {path}: the column 'label\U0001D159' cannot name a modality: its letters "
                                 "spell the reserved column 'label'; rename it")
    words = ["تصویر\u200cها", "क्\u200dष", "👩\u200d💻"]
    path.write_text(json.dumps({"image": "a.png", "label": "cat", **{w: "x" for w in words}}) + "\n")
    assert read_rows(path)[0] == ["image", *words]
    path.write_text(json.dumps({"image": "a.png", "label": "cat"}) + "\n"
                    + json.dumps({"\uff49\uff4d\uff41\uff47\uff45": "b.png", "label": "dog"}) + "\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (f"manifest {path}: the columns 'image' and '\uff49\uff4d\uff41\uff47\uff45' "
                                 "('\\uff49\\uff4d\\uff41\\uff47\\uff45') read as one name; rename one")
    path.write_text(json.dumps({"image": "a.png", "label": "cat", "lab\u200del": "cat", "x": "\u200d"}) + "\n")
    with pytest.raises(DataError) as caught:  # a joiner between letters is allowed, but still read through
        read_rows(path)
    assert str(caught.value).endswith("the column 'lab\\u200del' cannot name a modality: its letters spell the "
                                      "reserved column 'label'; rename it")


# ----- the forty-fourth audit -----------------------------------------------------------------------


@pytest.mark.parametrize(("second", "escaped"), [
    ("im\u200cage", "im\\u200cage"),  # a joiner between two letters (B1)
    ("image\u034f", "image\\u034f"),  # the combining grapheme joiner, which draws nothing (B1)
    ("\u0456mage", "\\u0456mage"),  # a Cyrillic і (A1)
])
def test_a44_b1_a1_two_columns_that_read_as_one_name_are_refused(tmp_path, second, escaped):
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.csv"
    path.write_text(f"image,{second},label\na.png,b.png,cat\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (f"manifest {path}: the columns 'image' and {second!r} ('{escaped}') read as one "
                                 "name; rename one")


def test_a44_a1_a2_b2_lookalike_labels_refused_flags_kept_and_spellings_shown(tmp_path):
    """A1: `lаbеl` with Cyrillic а and е fed the label to the teacher; B2: the flag of Scotland
    (🏴 and tag letters) was 'a control or invisible character'; A2: two spellings of `café`
    were refused with both printed alike."""
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", "l\u0430b\u0435l": "cat"}) + "\n")
    with pytest.raises(DataError, match="its letters spell the reserved column 'label'"):
        read_rows(path)
    flag = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", flag: "x"}) + "\n")
    assert read_rows(path)[0] == ["image", flag]
    path.write_text(json.dumps({"image": "a.png", "label": "cat", "x\U000E0067": "x"}) + "\n")  # a tag alone
    with pytest.raises(DataError, match="invisible character \\(U\\+E0067\\)"):
        read_rows(path)
    path.write_text(json.dumps({"caf\u00e9": "a.png", "cafe\u0301": "b.png", "label": "cat"}) + "\n")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert "the columns 'caf\u00e9' ('caf\\xe9') and 'cafe\u0301' ('cafe\\u0301') read as one name" in str(caught.value)


# ----- the forty-fifth audit ------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["L\u0410\u0412\u0415L",  # Cyrillic capitals А В Е (C1)
                                    "L\u0391\u0392\u0395L",  # Greek capitals Α Β Ε (C1)
                                    "\u029f\u1d00\u0299\u1d07\u029f"])  # Latin small capitals ʟᴀʙᴇʟ (C3)
def test_a45_c1_c3_capital_and_small_capital_lookalikes_of_label_are_refused(tmp_path, column):
    from distill_export.data.manifest_rows import read_rows

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "label": "cat", column: "cat"}) + "\n")
    with pytest.raises(DataError, match="its letters spell the reserved column 'label'"):
        read_rows(path)


def test_a45_c2_columns_that_differ_by_a_capital_lookalike_read_as_one(tmp_path):
    from distill_export.data.column_names import read_alike

    assert read_alike(["TEXT", "\u0422EXT"]) == ("TEXT", "\u0422EXT")
    assert read_alike(["\u0412\u0430\u0441\u044f", "image"]) is None  # a Russian name is a name


def test_a45_g2_another_tasks_gate_in_a_config_is_refused(tmp_path):
    """validate.fp32_map50_delta: 0.5 in a classification run's --config was recorded and never read;
    a whole config written back (every gate at its default) still loads."""
    from distill_export.config import load_config

    bad = tmp_path / "g.yaml"
    bad.write_text("validate:\n  fp32_map50_delta: 0.5\n")
    line = one_line_error(runner.invoke(app, ["run", "--config", str(bad), "--out", str(tmp_path / "r")]))
    assert line == (f"error: {bad}: validate.fp32_map50_delta is a gate of the detection task, but this run's task "
                    "is classification, which never reads it; drop it"), line
    assert not (tmp_path / "r").exists()
    whole = tmp_path / "whole.yaml"
    whole.write_text(__import__("yaml").safe_dump(load_config("avdigits").to_dict()))
    assert load_config(None, whole).validate.fp32_map50_delta == 0.001


def test_a45_p15_a_teacher_changed_after_train_teacher_names_the_fix_that_runs(run_copy):
    """profile and validate said "re-run `distill-export export`", which then refused and named
    `run --resume`: every command now names `run --resume`."""
    path = run_copy / "teacher.pt"
    saved = torch.load(path, weights_only=True)
    key = next(k for k, v in saved["state_dict"].items() if v.is_floating_point())
    saved["state_dict"][key] = saved["state_dict"][key] + 1.0
    torch.save(saved, path)
    for command in ("profile", "validate", "export"):
        line = one_line_error(runner.invoke(app, [command, str(run_copy)]))
        assert line == (f"error: {path} changed after train-teacher (the teacher stage measured another file: the "
                        f"run would mix two teachers), so `{command}` cannot run; re-run `distill-export run --resume "
                        f"{run_copy}` (or start a new run: `distill-export run --out NEW`)"), line


# ----- the forty-sixth audit ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--method", "hinton", "--alpha", "1", "--temperature", "3"], ["--alpha", "1"]])
def test_a46_a1_a2_alpha_1_with_a_distilling_method_is_refused(run_copy, argv):
    """It trained on the labels alone (report.json: labels_only) while config.yaml kept the method."""
    before = (run_copy / "config.yaml").read_text()
    line = one_line_error(runner.invoke(app, ["distill", str(run_copy), "--epochs", "1", *argv]))
    method = "hinton" if "hinton" in argv else "pseudo_label"
    assert line == (f"error: distill.alpha 1 (--alpha) leaves method {method} no distillation term (they weigh "
                    "1 - alpha = 0), so it would train on the labels alone; give an alpha below 1, or method "
                    "labels_only"), line
    assert (run_copy / "config.yaml").read_text() == before


def test_a46_p3_g7_t1_tune_checks_the_teacher_resume_the_gates_and_totals_go_with_their_stages(run_copy):
    """P3: tune on a run whose teacher.pt was replaced wrote tune.json from the other teacher; G7: another
    task's gate edited into config.yaml was kept on resume; T1: `run`'s total stayed after its stages were
    dropped."""
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_copy)
    run.update_report(timings={"total": 30.0})  # what `run` writes at its end
    assert "total" in json.loads((run_copy / "report.json").read_text())["timings"]
    run._forget(["profile"])
    assert "total" not in json.loads((run_copy / "report.json").read_text())["timings"]

    config = run_copy / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("fp32_map50_delta: 0.001", "fp32_map50_delta: 0.5"))
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]))
    assert line == (f"error: {config}: validate.fp32_map50_delta is a gate of the detection task, but this run's "
                    "task is classification, which never reads it; drop it"), line
    config.write_text(text)

    path = run_copy / "teacher.pt"
    saved = torch.load(path, weights_only=True)
    key = next(k for k, v in saved["state_dict"].items() if v.is_floating_point())
    saved["state_dict"][key] = saved["state_dict"][key] + 1.0
    torch.save(saved, path)
    line = one_line_error(runner.invoke(app, ["tune", str(run_copy), "--trials", "1", "--confirm-seeds", "0"]))
    assert line.startswith(f"error: {path} changed after train-teacher") and "run --resume" in line, line
    assert not (run_copy / "tune.json").exists()


# ----- the forty-seventh audit ----------------------------------------------------------------------


def test_a46_c1_an_edit_made_before_its_stage_ran_is_what_the_resumed_run_recorded(run_copy):
    """config.yaml edited before distill first ran, then `run --resume`: distill ran with the edit, yet
    later commands called it an edit made after the distill stage ran (state.json kept the old config)."""
    state = json.loads((run_copy / "state.json").read_text())
    for stage in ("distill", "export", "validate", "profile", "report"):
        state["stages"][stage] = {"status": "pending"}  # as if killed after the teacher stage
    (run_copy / "state.json").write_text(json.dumps(state))
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["distill"]["temperature"] = 3.0
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "-q"])
    assert result.exit_code == 0, result.output
    written = json.loads((run_copy / "state.json").read_text())["written_config"]
    assert written["distill"]["temperature"] == 3.0
    assert json.loads((run_copy / "report.json").read_text())["distill"]["temperature"] == 3.0
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 0, result.output


def test_a46_l5_a_loaded_teachers_training_setting_left_unread_by_a_later_distill_is_refused(tmp_path, run_copy):
    """train-teacher --teacher T --teacher-epochs 3 is accepted (the self-training control trains with
    it); a later `distill --no-self-training-control` trained no teacher and left it recorded."""
    out = tmp_path / "loaded"
    config = tmp_path / "tiny.yaml"
    config.write_text((run_copy / "config.yaml").read_text())
    result = runner.invoke(app, ["train-teacher", "--config", str(config), "--teacher", str(run_copy / "teacher.pt"),
                                 "--teacher-epochs", "3", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "teacher.epochs" in json.loads((out / "state.json").read_text())["given_teacher_keys"]
    before = (out / "config.yaml").read_text()
    line = one_line_error(runner.invoke(app, ["distill", str(out), "--no-self-training-control"]))
    assert line == (f"error: --teacher-epochs 3 (teacher.epochs) cannot apply: --teacher {run_copy / 'teacher.pt'} "
                    "is loaded, not trained, and no other teacher trains here (the self-training control is off and "
                    f"distill.rounds is 1); {out} took it for the teacher this distill would train; keep the "
                    "self-training control (or give distill.rounds above 1), or start a new run without "
                    "--teacher-epochs"), line
    assert (out / "config.yaml").read_text() == before
    (out / "config.yaml").write_text(before.replace("self_training_control: true", "self_training_control: false"))
    line = one_line_error(runner.invoke(app, ["run", "--resume", str(out)]))
    assert line.startswith("error: --teacher-epochs 3 (teacher.epochs) cannot apply"), line


@pytest.mark.parametrize("weight", [0.0, "0"])
def test_a47_z1_an_explicit_term_of_weight_0_is_refused(run_copy, tmp_path, weight):
    """terms [kd 0.0, ce 1.0] trained on the labels alone (report.json: labels_only, control skipped)
    while config.yaml listed kd and pseudo_label."""
    config = tmp_path / "t0.yaml"
    config.write_text(yaml.safe_dump({"distill": {"terms": [{"name": "kd", "weight": weight, "temperature": 4},
                                                            {"name": "ce", "weight": 1.0}]}}))
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(config), "--out", str(tmp_path / "r")]))
    assert line == ("error: distill.terms[0] ('kd') has weight 0, so it would never run while config.yaml lists it; "
                    "give it a weight above 0, or drop it from distill.terms"), line
    assert not (tmp_path / "r").exists()


def test_a47_l3_a_loaded_teachers_fusion_from_config_is_named_as_it_came(run_copy, tmp_path):
    """teacher.fusion: late in a --config beside a loaded concat teacher was refused as
    `--teacher-fusion late ...; drop --teacher-fusion`, a flag that was not given."""
    config = tmp_path / "late.yaml"
    config.write_text("teacher:\n  fusion: late\n")
    teacher = run_copy / "teacher.pt"
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(config), "--teacher", str(teacher),
                                              "--out", str(tmp_path / "r")]))
    assert line == (f"error: teacher.fusion late in --config cannot apply: --teacher {teacher} is loaded, not "
                    "trained, and is a concat teacher; drop teacher.fusion from --config or set it to concat"), line
    line = one_line_error(runner.invoke(app, ["train-teacher", "--teacher-fusion", "late", "--teacher", str(teacher),
                                              "--out", str(tmp_path / "r")]))
    assert line.startswith("error: --teacher-fusion late (teacher.fusion) cannot apply"), line


@pytest.mark.parametrize(("tool", "argv"), [("bench_profile", ["nope", "--repeats", "1"]), ("bench_export", ["--run", "nope"])])
def test_a47_b1_a_missing_run_is_named_before_the_default_out(tmp_path, monkeypatch, capsys, tool, argv):
    """After one call made the default --out, a missing run was refused as `--out ... is not empty`;
    bench_export's default --out was refused while bench-results/ did not exist."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench-results" / "profile").mkdir(parents=True)
    (tmp_path / "bench-results" / "profile" / "bench_profile.json").write_text("{}")
    assert _run_tool(tool, argv, monkeypatch) == 2
    assert _one_line(capsys.readouterr().err) == ("error: nope is not a run directory (no config.yaml); run "
                                                  "`distill-export run` or `train-teacher` first")


def test_a47_b1_bench_export_makes_its_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import argparse

    import bench_export

    bench_export.check_before_work(argparse.Namespace(run=None, out=bench_export.DEFAULT_OUT, student="tiny_cnn",
                                                      epochs=1, seed=0))
    assert (tmp_path / "bench-results").is_dir() and not (tmp_path / "bench-results" / "export.json").exists()


def test_a47_f2_a_factory_teacher_without_weights_gets_a_note_with_its_score(tmp_path, monkeypatch):
    """`--teacher pkg:factory` with no --teacher-weights taught with the factory's fresh weights, and
    nothing said so."""
    import sys
    import textwrap

    from _byo_fixtures import make_manifest

    (tmp_path / "fresh_teacher.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Fresh(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.fc = nn.LazyLinear(num_classes)
            def forward(self, image, audio):
                return self.fc(torch.cat([image.flatten(1), audio.flatten(1)], 1))

        def make(num_classes=3):
            return Fresh(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = make_manifest(tmp_path / "d", modalities=("image", "audio"))
    try:
        result = runner.invoke(app, ["train-teacher", "--data", str(manifest), "--teacher", "fresh_teacher:make",
                                     "--out", str(tmp_path / "r")])
    finally:
        sys.modules.pop("fresh_teacher", None)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: teacher fresh_teacher:make")]
    assert len(notes) == 1 and "no --teacher-weights" in notes[0], result.output
    score = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["teacher"]["accuracy"]
    assert notes[0].endswith(f"test accuracy {score:.3f}"), notes[0]


def test_a47_md1_modality_dropout_that_no_teacher_reads_is_refused(tmp_path):
    """teacher.modality_dropout 0.9 with late fusion was recorded in config.yaml; the experts never read it."""
    config = tmp_path / "mdl.yaml"
    config.write_text("teacher:\n  modality_dropout: 0.9\n  fusion: late\n")
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(config), "--out", str(tmp_path / "r")]))
    assert line == ("error: teacher.modality_dropout 0.9 is read by the concat teacher alone, and late fusion trains "
                    "one expert per modality, with none to drop (teacher.fusion late); drop teacher.modality_dropout"), line
    assert not (tmp_path / "r").exists()


def test_a47_md2_modality_dropout_on_one_modality_data_is_refused(tmp_path):
    from _byo_fixtures import make_manifest

    manifest = make_manifest(tmp_path / "d", modalities=("image",))
    config = tmp_path / "md9.yaml"
    config.write_text("teacher:\n  modality_dropout: 0.9\n")
    line = _refused(runner.invoke(app, ["train-teacher", "--data", str(manifest), "--config", str(config),
                                        "--out", str(tmp_path / "r")]))
    assert line == ("error: teacher.modality_dropout 0.9 cannot apply: the only column of the data is the student "
                    "modality 'image', so the teacher has no modality to drop; drop teacher.modality_dropout"), line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("distill", "line"), [
    ({"method": "labels_only", "teacher_view": "student"},
     "distill.teacher_view student sets how the teacher's targets are made, but distill.method labels_only (ce) "
     "reads no teacher; drop distill.teacher_view"),
    ({"method": "labels_only", "teacher_cache": False},
     "distill.teacher_cache false sets how the teacher's targets are made, but distill.method labels_only (ce) "
     "reads no teacher; drop distill.teacher_cache"),
    ({"terms": [{"name": "ce"}], "teacher_cache_dir": "cache"},
     "distill.teacher_cache_dir cache sets how the teacher's targets are made, but distill.terms (ce) reads no "
     "teacher; drop distill.teacher_cache_dir"),
    ({"method": "pseudo_label", "kd_impl": "reference"},
     "distill.kd_impl reference picks the KD loss's kernel, but distill.method pseudo_label (ce, pseudo_label) has "
     "no term that runs it (kd, ls_kd); drop distill.kd_impl"),
])
def test_teacher_target_settings_no_term_reads_are_refused(tmp_path, distill, line):
    """Found before the 48th audit: how the teacher's targets are made (its view, the cache) with an
    objective that reads no teacher, and the KD kernel with no KD term, were recorded as if they ran."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"distill": distill}))
    got = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(config), "--out", str(tmp_path / "r")]))
    assert got == f"error: {line}", got
    assert not (tmp_path / "r").exists()


def test_teacher_target_settings_an_objective_reads_are_accepted(tmp_path):
    from distill_export.cli.options import load

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"distill": {"method": "hinton", "teacher_view": "student", "kd_impl": "reference",
                                                  "teacher_cache": False}}))
    assert load(None, config, {}).distill.teacher_view == "student"


@pytest.mark.parametrize(("data", "line"), [
    ({"streaming": "off", "source": "m.csv", "stream_above_mb": 10},
     "data.stream_above_mb 10 is the size above which data.streaming auto streams a manifest, but data.streaming is "
     "off, which decides without it; drop data.stream_above_mb"),
    ({"stream_above_mb": 10},
     "data.stream_above_mb 10 is the size above which data.streaming auto streams a manifest, but data.source avdigits "
     "is a built-in dataset, which never streams; drop data.stream_above_mb"),
    ({"source": "m.csv", "pca_variance": 0.5},
     "data.pca_variance 0.5 shapes the built-in avdigits data alone, but data.source is m.csv; drop data.pca_variance"),
])
def test_data_settings_this_source_never_reads_are_refused(tmp_path, data, line):
    from distill_export.cli.options import load
    from distill_export.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(ConfigError) as refused:
        load(None, config, {})
    assert str(refused.value) == line


def test_a48_s1_a_factory_whose_signature_cannot_be_read_is_one_line(tmp_path):
    """`--teacher builtins:dict` (a builtin type: inspect.signature raises) was a ValueError traceback."""
    line = one_line_error(runner.invoke(app, ["train-teacher", "--teacher", "builtins:dict", "--out", str(tmp_path / "r")]))
    assert line.startswith("error: teacher factory builtins:dict: its signature cannot be read (ValueError: "), line
    assert line.endswith("is unknown; wrap it in a Python function"), line


def test_a48_d1_max_train_rows_that_draws_a_class_out_says_so(tmp_path, capsys):
    """max_train_rows 2 on 3 classes left a class with no training row, in silence."""
    from _byo_fixtures import make_manifest

    from distill_export.config import DataConfig
    from distill_export.data import load_dataset

    manifest = make_manifest(tmp_path / "d", modalities=("image",))
    load_dataset(DataConfig(source=str(manifest), max_train_rows=2), seed=0)
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note: data.max_train_rows 2")]
    assert len(notes) == 1 and "keeps no training row of" in notes[0], notes  # of 1 or 2 classes, as drawn
    assert notes[0].endswith("; raise data.max_train_rows"), notes
    load_dataset(DataConfig(source=str(manifest), max_train_rows=11), seed=0)
    assert "note: data.max_train_rows" not in capsys.readouterr().err


@pytest.mark.parametrize(("body", "lazy"), [
    ("nn.Flatten(), nn.LazyLinear(num_classes)", "1.weight"),  # 48th audit S3
    # lazy buffers and no lazy parameter: they passed the 48th round's check (49th audit S1)
    ("nn.Conv2d(in_channels, 4, 3, padding=1), nn.LazyBatchNorm2d(affine=False), nn.Flatten(), "
     "nn.Linear(4 * 64, num_classes)", "1.running_mean"),
])
def test_a48_s3_a49_s1_a_student_factory_with_lazy_parts_is_refused_up_front(tmp_path, monkeypatch, body, lazy):
    """nn.LazyLinear passed the shape check (on another instance), then training raised from
    _checkpoint_key: `Can't access the shape of an uninitialized parameter`."""
    import sys

    (tmp_path / "lazy_student.py").write_text("import torch.nn as nn\n\ndef make(num_classes, in_channels=1):\n"
                                              f"    return nn.Sequential({body})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from distill_export.errors import ConfigError
    from distill_export.nets.students import create_student

    try:
        with pytest.raises(ConfigError) as refused:
            create_student("lazy_student:make", 3)
    finally:
        sys.modules.pop("lazy_student", None)
    assert str(refused.value) == (f"student factory lazy_student:make has a lazy parameter or buffer ({lazy}, e.g. "
                                  "nn.LazyLinear) whose shape is set by the first batch, but training needs every shape "
                                  "up front; give the layer its sizes")


def test_a49_o1_a_file_on_the_way_to_an_output_file_is_named(tmp_path, run_copy):
    (tmp_path / "afile").write_text("hi\n")
    line = one_line_error(runner.invoke(app, ["tune", str(run_copy), "--trials", "1", "--out",
                                              str(tmp_path / "afile" / "t.yaml")]))
    assert line == (f"error: --out {tmp_path / 'afile' / 't.yaml'}: {tmp_path / 'afile'} is a file, not a folder; "
                    "choose another --out"), line


def test_a48_t1_an_out_folder_below_a_file_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """A file named bench-results in the current folder: bench_profile refused only after the whole
    benchmark, with `Not a directory (bench-results/profile)`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench-results").write_text("mine\n")
    assert _run_tool("bench_profile", ["--repeats", "1"], monkeypatch) == 2
    assert _one_line(capsys.readouterr().err) == ("error: --out bench-results/profile: bench-results is a file, not a "
                                                  "folder, so the folder cannot be made; choose another --out")
    assert (tmp_path / "bench-results").read_text() == "mine\n"


def test_a47_md1_modality_dropout_0_with_late_fusion_is_accepted(tmp_path):
    """0 says what runs (no dropout): the 48th audit found it refused with late fusion."""
    from distill_export.cli.options import load

    config = tmp_path / "md0.yaml"
    config.write_text("teacher:\n  modality_dropout: 0\n  fusion: late\n")
    assert load(None, config, {}).teacher.modality_dropout == 0


@pytest.mark.parametrize("recipe", ["avmnist", "captioned_digits", "rgb96", "moving_digits"])
def test_a_runs_own_config_of_another_recipe_is_accepted_as_config(tmp_path, recipe):
    """`run --config RUN/tuned.yaml` (documented) of an AV-MNIST run, without --recipe: its recorded
    pca_variance 0.25 (RunConfig's default) differs from avdigits' 0.75, and was refused as set."""
    from distill_export.cli.options import load
    from distill_export.config import load_config

    recorded = load_config(recipe, None, {}).to_dict()
    recorded["out"] = None
    config = tmp_path / "tuned.yaml"
    config.write_text(yaml.safe_dump(recorded, sort_keys=False))
    assert load(None, config, {}).data.source == recorded["data"]["source"]


@pytest.mark.parametrize("recipe", ["avmnist", "rgb96", "captioned_digits"])
def test_a49_t2_a_default_runs_config_beside_a_recipe_is_accepted(tmp_path, recipe):
    """`--recipe avmnist --config RUN/config.yaml` of a default run (pca_variance 0.75, the avdigits
    recipe's, recorded on a manifest) was refused for settings the product wrote itself."""
    from distill_export.cli.options import load
    from distill_export.config import load_config

    recorded = load_config("avdigits", None, {"data.source": "m.csv"}).to_dict()
    recorded["out"] = None
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(recorded, sort_keys=False))
    assert load(recipe, config, {}).data.source == "m.csv"


@pytest.mark.parametrize(("sig", "code", "line"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_a49_i1_i2_a_tool_interrupted_ends_in_one_line_and_the_signals_code(tmp_path, sig, code, line):
    """Ctrl-C in bench_export/bench_profile was a KeyboardInterrupt traceback; SIGTERM ended with no line."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parents[1] / "tools"
    script = tmp_path / "slow_tool.py"
    script.write_text(f"import sys, time\nsys.path.insert(0, {str(tools)!r})\nfrom toolargs import one_line_errors\n\n"
                      "@one_line_errors\ndef main():\n    print('ready', flush=True)\n    time.sleep(60)\n\nmain()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and _one_line(err) == line, (proc.returncode, err)


def test_a_hand_written_config_at_a_default_value_still_counts_as_set(tmp_path):
    """Only a whole recorded config (config.yaml, tuned.yaml) is read leniently: a hand-written one that
    names pca_variance 0.25 (RunConfig's default) on a manifest is still refused as unread."""
    from distill_export.cli.options import load
    from distill_export.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "m.csv", "pca_variance": 0.25}}))
    with pytest.raises(ConfigError, match=r"^data.pca_variance 0.25 shapes the built-in avdigits data alone"):
        load(None, config, {})


# ----- the fifty-second audit -----------------------------------------------------------------------


def test_a52_f3_profile_after_a_reexport_renders_no_report_the_report_stage_refuses(run_copy):
    """export again (validate, profile, report stale), then profile: it wrote a full report.md/html,
    "recommended: none" with nothing validated, while `report` refused as validate was stale."""
    result = runner.invoke(app, ["export", str(run_copy), "--format", "onnx", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["profile", str(run_copy), "--threads", "1", "--batch", "1", "--min-time", "0.05", "-q"])
    assert result.exit_code == 0, result.output
    assert (f"note: report.md and report.html are not written: stage validate is not done; next: `distill-export "
            f"validate {run_copy}`") in result.output, result.output
    assert not (run_copy / "report.md").exists() and not (run_copy / "report.html").exists()
    record = json.loads((run_copy / "report.json").read_text())
    assert record["latency"] and "recommendation" not in record
    state = json.loads((run_copy / "state.json").read_text())["stages"]
    assert (state["validate"]["status"], state["profile"]["status"], state["report"]["status"]) == \
        ("stale", "done", "stale")
    result = runner.invoke(app, ["validate", str(run_copy)])  # the complete record renders its report
    assert result.exit_code == 0, result.output
    assert (run_copy / "report.md").is_file()


def test_a52_f2_models_of_one_name_in_folders_of_one_name_are_told_apart(tmp_path):
    """p1/a/student.onnx, p2/a/student.onnx and p3/student@a.onnx were all `student@a`: one plot series."""
    from types import SimpleNamespace

    from distill_export.profiling.targets import _dedupe

    paths = [tmp_path / "p1" / "a" / "student.onnx", tmp_path / "p2" / "a" / "student.onnx",
             tmp_path / "p3" / "student@a.onnx", tmp_path / "r5" / "teacher.onnx"]
    benches = [SimpleNamespace(model=p.stem, fmt="onnx", backend="ort-cpu", info={"path": str(p)}) for p in paths]
    names = [b.model for b in _dedupe(benches)]
    assert len(set(names)) == 4, names
    assert names[:2] == ["student@p1/a", "student@p2/a"] and names[3] == "teacher", names


def test_a52_f4_a_relative_teacher_read_from_another_folder_is_not_timed(run_copy, tmp_path, monkeypatch):
    """A run made with a relative --teacher, profiled with --out from a folder holding another file of
    that name, timed the other teacher; validate blamed a change and advised run --resume."""
    state = json.loads((run_copy / "report.json").read_text())
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "t").mkdir(parents=True)
    (elsewhere / "t" / "teacher.pt").write_bytes((run_copy / "teacher.pt").read_bytes() + b"other")
    config["teacher"]["path"] = "t/teacher.pt"  # as `--teacher t/teacher.pt` records it
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    written = json.loads((run_copy / "state.json").read_text())
    written["written_config"] = config
    (run_copy / "state.json").write_text(json.dumps(written))
    assert state["teacher"]["file_sha256"]
    monkeypatch.chdir(elsewhere)
    for argv in (["profile", str(run_copy), "--out", str(tmp_path / "o")], ["validate", str(run_copy)]):
        line = one_line_error(runner.invoke(app, argv))
        assert line.startswith(f"error: t/teacher.pt (teacher.path, read from the current folder {elsewhere}) is not "
                               "the file the teacher stage measured"), line
        assert "run it from the folder the run was started in" in line, line
    assert not (tmp_path / "o").exists()


def test_a52_a2_a_formula_like_model_name_is_inert_in_latency_csv(tmp_path):
    from distill_export.report import write_latency_csv

    write_latency_csv([{"model": '=HYPERLINK("http:evil")', "format": "onnx", "p50_ms": -0.5}], tmp_path / "l.csv")
    assert (tmp_path / "l.csv").read_text().splitlines()[1] == '"\'=HYPERLINK(""http:evil"")",onnx,-0.5'


def test_a52_a3_a_hard_link_to_a_target_is_one_target(tmp_path):
    import os

    from distill_export.profiling.command import _check_each_once

    (tmp_path / "m.onnx").write_bytes(b"x")
    os.link(tmp_path / "m.onnx", tmp_path / "hard.onnx")
    with pytest.raises(ConfigError, match=r"are the same file \(a hard link\); name each target once$"):
        _check_each_once([tmp_path / "m.onnx", tmp_path / "hard.onnx"])


def test_bench_train_leaves_no_scratch_folder_behind(tmp_path, monkeypatch, capsys):
    """Every manifest went into its own temporary folder (and the PNGs, without --images, into another),
    none of them removed: 28 such folders had piled up in /tmp by the ninth session's end."""
    import tempfile

    from distill_export.errors import DataError

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import sys

    import bench_train

    def fail_midway(args, folder, scratch, torch):
        bench_train.write_manifest(folder, 10, scratch)
        raise DataError("stopped midway")

    monkeypatch.setattr(bench_train, "measure", fail_midway)
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--quick", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        bench_train.main()
    assert exit_.value.code == 2
    assert "stopped midway" in capsys.readouterr().err
    assert list(scratch_root.iterdir()) == []
