"""Twentieth round (issue 24): a hand edit of config.yaml is noticed by the stage commands too.

The eighteenth round made `run --resume` refuse a key edited after the stage that reads it was
done. `export`, `validate`, `profile`, `distill` and `tune` on a run read the same config.yaml and
did not: `export RUN` after `distill.epochs` 1 -> 2 exported the 1-epoch student and wrote
config.yaml (and report.json's record of it) saying 2. Now every stage command refuses an edit
for a done stage before the one it runs again, and runs with an edit for its own stage or a later one."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


def _written(run, section: str, key: str):
    return json.loads((run / "state.json").read_text())["written_config"][section][key]


def _edit(run, section: str, key: str, value) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize(("command", "section", "key", "value", "stage", "again"), [
    ("export", "distill", "epochs", 7, "distill", "run `distill-export distill {run}` first, which runs it with the edit"),
    ("export", "data", "label_fraction", 0.5, "train_teacher", "start a new run with `--out NEW`"),
    ("validate", "export", "opset", 17, "export", "run `distill-export export {run}` first, which runs it with the edit"),
    ("distill", "teacher", "width", 12, "train_teacher", "start a new run with `--out NEW`"),
    ("tune", "teacher", "epochs", 9, "train_teacher", "start a new run with `--out NEW`"),
    ("profile", "student", "name", "resnet18", "distill", "run `distill-export distill {run}` first, which runs it with the edit"),
])
def test_a_stage_command_refuses_an_edit_of_what_an_earlier_done_stage_ran_with(
        run_copy, command, section, key, value, stage, again):
    _edit(run_copy, section, key, value)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
    assert line == (f"error: {run_copy}: {section}.{key} in its config.yaml ({value!r}) is not the value the {stage} "
                    f"stage ran with ({_written(run_copy, section, key)!r}, as state.json records it), so the run would record a setting that did not run; restore it, or "
                    + again.format(run=run_copy)), line
    assert snapshot(run_copy) == before


def test_an_edit_for_the_stage_a_command_runs_is_what_it_runs_with(run_copy):
    from distill_export.launch import open_run

    _edit(run_copy, "distill", "epochs", 2)
    _edit(run_copy, "export", "opset", 17)  # a later stage: distill makes it stale, the edit is for its re-run
    assert open_run(run_copy, None, command="distill")[1].distill.epochs == 2
    with pytest.raises(Exception, match=r"distill.epochs in its config.yaml \(2\) is not the value the distill stage ran with \(1, "):
        open_run(run_copy, None, command="export")


def test_validate_runs_with_edited_gates_and_a_resume_then_accepts_them(run_copy):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    gates = config["validate"]
    name = next(k for k, v in gates.items() if isinstance(v, float))
    _edit(run_copy, "validate", name, gates[name] * 2)  # a looser gate: validate runs with it
    result = runner.invoke(app, ["validate", str(run_copy), "-q"])
    assert result.exit_code == 0, result.output
    written = json.loads((run_copy / "state.json").read_text())["written_config"]
    assert written["validate"][name] == gates[name] * 2  # what ran is now what the product wrote
    from distill_export.config_edits import check_hand_edits
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_copy)
    check_hand_edits(run, run_copy, run.load_config().to_dict())  # `run --resume`: nothing to refuse


def test_no_edit_no_refusal_and_out_or_device_are_not_edits(run_copy):
    from distill_export.config_edits import check_hand_edits, differences
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_copy)
    config = run.load_config().to_dict()
    for command in (None, "distill", "export", "validate", "profile"):
        check_hand_edits(run, run_copy, config, command)
    assert differences({"out": "a", "seed": 0}, {"out": "b", "seed": 0}) == []
    assert differences({"a": {"b": [1, 2]}}, {"a": {"b": (1, 2)}}) == []
    assert differences({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == ["a.b", "a.c"]


# ----- a NaN or infinity anywhere in report.json is a corrupt record ---------------------------

def _float_leaves(value, where=()):
    if isinstance(value, float):
        yield where
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _float_leaves(child, (*where, key))


def test_every_number_of_a_real_report_refuses_nan_and_infinity(tiny_run, tmp_path):
    """The eighteenth audit's leftover: a NaN parity difference hand-edited into report.json was
    rendered PASS (the typed models leave parity open). Every float leaf of a real run's report,
    set to NaN in turn, makes the record corrupt, naming its key."""
    from distill_export.record import store
    from distill_export.record.migrate import RecordError

    record = json.loads((tiny_run / "report.json").read_text())
    leaves = list(_float_leaves(record))
    assert len(leaves) > 20 and any("parity" in map(str, leaf) for leaf in leaves)
    path = tmp_path / "report.json"
    for leaf in leaves:
        edited = json.loads(json.dumps(record))
        target = edited
        for key in leaf[:-1]:
            target = target[key]
        target[leaf[-1]] = float("nan")
        path.write_text(json.dumps(edited))
        with pytest.raises(RecordError, match=r"is corrupt: ") as caught:
            store.load(path)
        assert ".".join(map(str, leaf)) in str(caught.value), (leaf, caught.value)


def test_report_refuses_a_nan_parity_difference_in_one_line(run_copy):
    record = json.loads((run_copy / "report.json").read_text())
    parity = next(art["parity"] for art in record["exports"].values() if art.get("parity"))
    key = next(k for k, v in parity.items() if isinstance(v, float))
    parity[key] = float("nan")
    (run_copy / "report.json").write_text(json.dumps(record))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: exports.") and f"parity.{key}: nan" in line, line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("second", ["student.onnx", "sub/../student.onnx"])
def test_profile_refuses_a_target_given_twice(tiny_run, tmp_path, monkeypatch, second):
    """An audit's leftover: `profile A A` measured A twice and listed its rows twice."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_run / "student.onnx", "student.onnx")
    (tmp_path / "sub").mkdir()
    line = one_line_error(runner.invoke(app, ["profile", "student.onnx", second]), 2)
    same = "student.onnx is given twice" if second == "student.onnx" else f"student.onnx and {second} are the same path"
    assert line == f"error: {same}; name each target once", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "sub"]


# ----- B8: a really full disk under torch.save -------------------------------------------------

def test_b8_a_full_disk_under_torch_save_is_one_line_and_no_folder(tmp_path, monkeypatch, tiny_config_file):
    """A real full file system (tmpfs, 150 KB) made `run` print 89 lines: torch's zip writer fails
    again in __exit__ ('unexpected pos'), a RuntimeError over the ENOSPC. The earlier test's
    torch.save raised ENOSPC itself. Here the file torch writes into fills up after 2 KB, so
    torch.save really runs and raises its own error; the folder `run` made is removed."""
    import errno
    import io

    import distill_export.files as files

    class FillsUp(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(files, "open", lambda path, mode="r", *a, **k: FillsUp(path, mode.replace("b", "")),
                        raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "--config", str(tiny_config_file), "--out", "r", "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.splitlines() == ["run directory: r", "error: cannot write r/checkpoints/teacher.pt: no space "
                                          "left on the device; free some space and run the command again"]
    assert not (tmp_path / "r").exists()


def test_b8_the_guard_finds_a_full_disk_under_any_library_error(capsys):
    import errno

    from _cli_checks import guarded_stderr

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "big.bin")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as exc:
        chained = exc
    assert guarded_stderr(capsys, chained) == (
        2, "error: no space left on the device ('big.bin'); free some space or choose another --out\n")
    with pytest.raises(RuntimeError):  # a RuntimeError with no full disk under it stays a bug
        guarded_stderr(capsys, RuntimeError("a bug"))


# ----- B2: a detection manifest with a column its teacher does not read --------------------------

def test_b2_a_detection_column_the_teacher_cannot_read_is_refused_before_training(tmp_path, monkeypatch):
    """A detection manifest with an audio column: the teacher trained without it, then its own
    data was refused ('column audio is not one teacher was built for'), the run folder left behind
    and `run --resume` refusing forever. Now refused before anything trains, no folder made."""
    pytest.importorskip("av")
    import csv

    from _byo_fixtures import tone, write_wav
    from _video_fixtures import make_video_manifest

    monkeypatch.chdir(tmp_path)
    manifest = make_video_manifest(tmp_path, per_split=(4, 2, 2), boxes=True)
    rows = list(csv.DictReader(manifest.open()))
    for i, row in enumerate(rows):
        row["audio"] = f"wav/{i}.wav"
        write_wav(tmp_path / row["audio"], tone(400, seed=i))
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "det.yaml").write_text(yaml.safe_dump({
        "task": "detection", "data": {"source": "manifest.csv", "student_modality": "image", "clip_frames": 5,
                                          "label_fraction": 0.5},
        "teacher": {"fusion": "late", "width": 8, "epochs": 1}, "student": {"name": "centernet_tiny"},
        "distill": {"method": "det_kd", "epochs": 1}}))
    for command in ("run", "train-teacher"):
        result = runner.invoke(app, [command, "--config", "det.yaml", "--out", "R", "-q"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        line = result.output.strip().splitlines()[-1]  # after the data line (rows, memory)
        assert "epoch" not in result.output and line == ("error: column 'audio' (audio) is not read by a detection teacher, which reads 'video' "
                        "alone; drop the column"), line
        assert not (tmp_path / "R").exists()


def test_a_nan_output_is_the_worst_parity_never_a_nan_that_hides():
    """A NaN compares false with every gate and every other batch size: max([0.1, nan]) was 0.1,
    so an export that returned NaN at batch 32 could pass on its batch-1 numbers. Task.parity
    makes a NaN metric the worst of its direction, so report.json never holds a NaN."""
    import numpy as np

    from distill_export.tasks import get_task

    task = get_task("classification")
    reference = np.array([[1.0, 2.0], [3.0, 0.5]], np.float32)
    good = task.parity(reference + 1e-6, reference, np.array([1, 0]))
    broken = reference.copy()
    broken[1, 0] = np.nan
    bad = task.parity(broken, reference, np.array([1, 0]))
    assert bad["max_abs_diff"] == bad["mean_abs_diff"] == float("inf") and bad["min_cosine"] == float("-inf")
    worst = task.worst_case({"1": good, "32": bad})
    assert worst["max_abs_diff"] == float("inf") and worst["min_cosine"] == float("-inf")
    assert task.worst_case({"32": bad, "1": good})["max_abs_diff"] == float("inf")


# ----- B7: another run's report.json; B3: a manifest changed after the teacher stage ---------------

def test_b7_a_report_json_from_another_run_is_named(run_copy, tiny_run):
    """report.json copied in from another run was blamed on student.pt ('changed after distill',
    unchanged), and the advice (re-run distill) kept the foreign record's teacher and timings."""
    state = json.loads((tiny_run / "state.json").read_text())
    record = json.loads((tiny_run / "report.json").read_text())
    assert len(state["run_id"]) == 16 and record["run_id"] == state["run_id"]  # kept through every stage
    record["run_id"] = "0123456789abcdef"  # as another run's report.json says
    (run_copy / "report.json").write_text(json.dumps(record))
    before = snapshot(run_copy)
    for command in (["validate"], ["report"], ["export"], ["profile"], ["distill"]):
        line = one_line_error(runner.invoke(app, [*command, str(run_copy)]), 2)
        assert line == (f"error: {run_copy / 'report.json'} is from another run (its run_id '0123456789abcdef' is not "
                        f"this run's '{state['run_id']}', in state.json): restore this run's report.json, or start "
                        "a new run with `--out NEW`"), (command, line)
    assert snapshot(run_copy) == before


def test_b3_a_manifest_changed_after_the_teacher_stage_is_refused(tmp_path, monkeypatch):
    """Boxes moved (or labels edited) in the manifest after train-teacher: distill trained on the
    new rows while the report kept the teacher's scores on the old ones. Now distill, export, tune
    and `run --resume` refuse, naming the manifest; restored, it runs."""
    from _byo_fixtures import make_manifest

    monkeypatch.chdir(tmp_path)
    make_manifest(tmp_path / "m", per_class=6, modalities=("image", "audio"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"teacher": {"epochs": 1}, "distill": {"epochs": 1}}))
    result = runner.invoke(app, ["train-teacher", "--data", "m/manifest.csv", "--config", "c.yaml", "--out", "R", "-q"])
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "m" / "manifest.csv"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b"cat", b"dog", 1))  # one label changed
    before = snapshot(tmp_path / "R")
    for command in (["distill", "R"], ["tune", "R", "--trials", "1"], ["run", "--resume", "R"]):
        result = runner.invoke(app, [*command, "-q"] if command[0] != "tune" else command)
        assert result.exit_code == 2 and "Traceback" not in result.output, (command, result.output)
        line = result.output.strip().splitlines()[-1]
        assert line.startswith("error: R: its manifest m/manifest.csv changed after the teacher stage read it "
                               "(sha256 ") and "so the run would mix two datasets" in line, (command, line)
    assert snapshot(tmp_path / "R") == before
    manifest.write_bytes(original)
    from distill_export.rundir import RunDir

    RunDir.existing(tmp_path / "R").check_same_data("m/manifest.csv")  # restored: nothing to refuse


def test_a3_the_decision_line_names_the_tasks_score():
    """Detection `tune` said 'mean val accuracy' where it meant mAP50 (the search line said mAP50)."""
    from distill_export.confirm import decision_line

    win = {"number": 0, "method": "heatmap_kd", "mean_val_accuracy": 0.4, "mean_gain": 0.1, "augment": None}
    confirmation = {"candidates": [win], "winner": 0, "seeds": [1, 2, 3], "p_value": 0.01, "distill": True,
                    "baseline": {"mean_val_accuracy": 0.3}, "metric": "mAP50"}
    assert decision_line(confirmation) == ("confirmed: heatmap_kd (trial 1) 40.0% vs labels-only baseline 30.0% "
                                           "mean val mAP50 over 3 fresh seeds, +10.0 points, paired p=0.01")
    del confirmation["metric"]  # a tune.json written before: classification's word
    assert "mean val accuracy over 3" in decision_line(confirmation)
