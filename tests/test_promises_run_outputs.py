"""Behaviour-level tests of run_outputs.py (issue 25), with no training: run folders built by hand.

- a stage recorded done whose output file is gone is outdated, and only stages recorded done are
  judged, in stage order; a command is refused only for the stages it builds on, in one line
  naming the file and the command that makes it again;
- export is outdated when student.pt or teacher.pt is not the checkpoint the exports were made
  from (their sha256 in parity_data.npz / teacher_exports); unknown hashes are not changes;
- an artifact whose bytes are not what validate hashed, or that is gone, is changed;
- `run --resume` makes the outdated stage and the done stages built on it stale, saying why, and
  drops what they wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill_export.config import RunConfig
from distill_export.errors import ConfigError
from distill_export.files import sha256_file
from distill_export.rundir import RUN_STAGES, RunDir


def _state(run: RunDir) -> dict:
    return json.loads(run.file("state.json").read_text())["stages"]


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A finished run: every stage done, each one's files there, hashes recorded as export and
    validate record them."""
    run = RunDir.create(tmp_path / "r", fresh=True, stages=RUN_STAGES)
    for s in RUN_STAGES:
        run.mark_stage(s)
    run.save_config(RunConfig())
    for name in ("teacher.pt", "student.pt", "student.onnx", "student_int8.onnx", "teacher.onnx", "report.md"):
        run.file(name).write_text(name)
    np.savez(run.file("parity_data.npz"), checkpoint_sha256=np.array(sha256_file(run.file("student.pt"))))
    sha = {n: sha256_file(run.file(n)) for n in ("student.onnx", "student_int8.onnx", "teacher.onnx")}
    rep = {"schema_version": 1, "run_id": json.loads(run.file("state.json").read_text())["run_id"],  # the claim's
           "metrics": {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.8}},
           "exports": {"onnx": {"path": "student.onnx", "parity": {"passed": True, "artifact_sha256": sha["student.onnx"]}},
                       "onnx_int8": {"path": "student_int8.onnx",
                                     "parity": {"passed": True, "artifact_sha256": sha["student_int8.onnx"]}},
                       "tensorrt": {"skipped": "no GPU"}},
           "teacher_exports": {"onnx": {"path": "teacher.onnx", "source_checkpoint_sha256": sha256_file(run.file("teacher.pt")),
                                        "parity": {"passed": True, "artifact_sha256": sha["teacher.onnx"]}}},
           "recommended": {"cpu": {"format": "onnx"}}, "timings": {"validate": 1.0, "profile": 2.0}}
    run.file("report.json").write_text(json.dumps(rep))
    return run


def test_a_finished_run_with_its_files_is_current(run):
    assert run.outdated_output() is None and run.outdated_stage() is None and run.changed_artifacts() == []
    run.require_unchanged_artifacts("profile")
    run.require_stages(None, "report")
    assert run.stale_if_outdated() is None and all(v["status"] == "done" for v in _state(run).values())


@pytest.mark.parametrize("name, stage", [("teacher.pt", "train_teacher"), ("student.pt", "distill"),
                                         ("student_int8.onnx", "export"), ("parity_data.npz", "export")])
def test_a_done_stage_whose_output_is_gone_is_named_with_the_command_that_makes_it(run, name, stage):
    run.file(name).unlink()
    assert run.outdated_output() == (stage, run.file(name), "is missing")
    with pytest.raises(ConfigError) as info:
        run.require_stages(None, "report")
    command = {"train_teacher": f"`distill-export run --resume {run.path}` (or start a new run: `distill-export "
                                "run --out NEW`)"}.get(stage, f"`distill-export {stage} {run.path}`")
    assert str(info.value) == (f"{run.file(name)} is missing (the {stage} stage made it), so `report` cannot run; "
                               f"re-run {command}")
    assert run.outdated_stage() == (stage, f"{name} is missing")


def test_only_the_stages_asked_for_and_recorded_done_are_judged(run):
    run.file("student.pt").unlink()
    run.file("student.onnx").unlink()
    assert run.outdated_output(("export",)) == ("export", run.file("student.onnx"), "is missing")
    assert run.outdated_output(("train_teacher", "validate")) is None
    assert run.outdated_output()[0] == "distill"  # the first in stage order
    run.set_stages({**_state(run), "distill": {"status": "pending"}})
    assert run.outdated_output()[0] == "export"  # a stage not done is not judged


def test_a_loaded_teacher_is_no_output_of_the_run(run):
    cfg = RunConfig()
    cfg.teacher.path = "/elsewhere/teacher.pt"
    run.save_config(cfg)
    run.file("teacher.pt").unlink()
    assert run.outdated_output() is None
    run.file("config.yaml").write_text("seed: [not a seed\n")  # unreadable: load_config names it elsewhere
    assert run.outdated_output() is None


def test_export_is_outdated_when_a_checkpoint_is_not_the_one_exported(run):
    run.file("student.pt").write_text("another student")
    assert run.outdated_output() == ("export", run.file("student.pt"), "changed after export")
    with pytest.raises(ConfigError) as info:
        run.require_stages(("export",), "validate")
    assert str(info.value) == (f"{run.file('student.pt')} changed after export (the exports were made from another "
                               f"checkpoint), so `validate` cannot run; re-run `distill-export export {run.path}`")
    run.file("student.pt").write_text("student.pt")
    run.file("teacher.pt").write_text("another teacher")
    assert run.outdated_output() == ("export", run.file("teacher.pt"), "changed after export")
    assert run.outdated_stage() == ("export", "teacher.pt changed after export")


def test_unknown_checkpoint_hashes_are_not_changes(run):
    run.file("student.pt").write_text("another student")
    run.file("teacher.pt").write_text("another teacher")
    np.savez(run.file("parity_data.npz"), logits=np.zeros(2))  # written before hashes were recorded
    rep = json.loads(run.file("report.json").read_text())
    del rep["teacher_exports"]["onnx"]["source_checkpoint_sha256"]
    run.file("report.json").write_text(json.dumps(rep))
    assert run.outdated_output() is None
    run.file("parity_data.npz").write_bytes(b"")  # unreadable: validate names it
    assert run.outdated_output() is None


def test_an_artifact_changed_or_removed_after_validate_is_refused(run):
    run.file("student_int8.onnx").write_text("edited by hand")
    assert run.changed_artifacts() == [run.file("student_int8.onnx")]
    with pytest.raises(ConfigError) as info:
        run.require_unchanged_artifacts("profile")
    assert str(info.value) == (f"{run.file('student_int8.onnx')} changed after validate (its content is not what "
                               f"validate checked), so `profile` would report the old parity; re-run `distill-export "
                               f"validate {run.path}`")
    assert run.outdated_stage() == ("validate", "student_int8.onnx changed after validate")
    run.file("teacher.onnx").unlink()
    assert run.changed_artifacts() == [run.file("student_int8.onnx"), run.file("teacher.onnx")]
    run.file("student_int8.onnx").write_text("student_int8.onnx")
    with pytest.raises(ConfigError, match=f"^{run.file('teacher.onnx')} was removed after validate"):
        run.require_unchanged_artifacts("report")
    run.set_stages({**_state(run), "validate": {"status": "pending"}})
    assert run.outdated_stage() is None  # not validated: nothing to be changed from


def test_an_artifact_validated_before_hashes_were_recorded_is_unknown_not_changed(run):
    rep = json.loads(run.file("report.json").read_text())
    del rep["exports"]["onnx"]["parity"]["artifact_sha256"]
    run.file("report.json").write_text(json.dumps(rep))
    run.file("student.onnx").write_text("edited")
    assert run.changed_artifacts() == []
    run.file("student_int8.onnx").write_text("edited")  # the artifacts after an unknown one are still checked
    run.file("teacher.onnx").write_text("edited")
    assert run.changed_artifacts() == [run.file("student_int8.onnx"), run.file("teacher.onnx")]


@pytest.mark.parametrize("name, change", [("teacher.pt", "unlink"), ("student.pt", "unlink"),
                                          ("student.pt", "replace"), ("parity_data.npz", "unlink")])
def test_what_reads_the_recorded_parity_refuses_a_lost_or_replaced_checkpoint(run, name, change):
    if change == "unlink":
        run.file(name).unlink()
    else:
        run.file(name).write_text("another one")
    with pytest.raises(ConfigError) as info:
        run.require_unchanged_artifacts("report")
    why = "is missing" if change == "unlink" else "changed after export"
    assert str(info.value).startswith(f"{run.file(name)} {why} (") and "so `report` cannot run; re-run" in str(info.value)


def test_a_run_that_planned_only_its_first_stages_is_judged_on_those(tmp_path):
    run = RunDir.create(tmp_path / "r", fresh=True, stages=("train_teacher", "distill"))  # as train-teacher plans
    run.save_config(RunConfig())
    run.file("teacher.pt").write_text("t")
    run.mark_stage("train_teacher")
    run.mark_stage("distill")
    run.file("student.pt").write_text("s")
    assert run.outdated_stage() is None and run.stale_if_outdated() is None
    run.file("student.pt").unlink()
    assert run.stale_if_outdated() == "student.pt is missing"
    assert _state(run) == {"train_teacher": _state(run)["train_teacher"],
                           "distill": {"status": "stale", "after": "distill", "why": "student.pt is missing"}}


def test_resume_makes_the_outdated_stage_and_those_built_on_it_stale(run):
    run.file("student.pt").write_text("another student")
    run.set_stages({**_state(run), "profile": {"status": "pending"}})
    assert run.stale_if_outdated() == "student.pt changed after export"
    state = _state(run)
    why = {"status": "stale", "after": "export", "why": "student.pt changed after export"}
    assert state["export"] == state["validate"] == state["report"] == why
    assert state["profile"] == {"status": "pending"} and state["distill"]["status"] == "done"
    rep = json.loads(run.file("report.json").read_text())
    assert "exports" not in rep and "recommended" not in rep and rep["metrics"]["student"] == {"accuracy": 0.8}
    assert not run.file("report.md").exists()
    with pytest.raises(ConfigError, match="stages export, validate are stale \\(student.pt changed after export\\)"):
        run.require_stages(("export", "validate"), "profile")


def test_resume_validates_a_changed_artifact_again(run):
    run.file("student.onnx").write_text("edited")
    assert run.stale_if_outdated() == "student.onnx changed after validate"
    state = _state(run)
    assert state["export"]["status"] == "done" and state["validate"]["status"] == state["report"]["status"] == "stale"
    assert RunDir.resumable(run.path).resume_plan()[1] == ["validate", "profile", "report"]
