"""Behaviour-level tests of the run directory's promises (issue 25, rundir.py), with no training:

- a run is claimed once (report.json made exclusively) and a claimed run that finished nothing
  can be discarded; runs/<timestamp> gets -2, -3, ... when taken;
- stage state: a stage that starts again makes the stages made from it stale and drops what it
  and they wrote (report sections, teacher metrics kept, parity, timings, rendered files);
  a command on a missing or stale stage is refused in one line that says what to type next;
- a finished stage's checkpoints go, and only its own; `run --resume` refuses what it cannot
  continue and says what it reuses and where training continues;
- the lock refuses a second holder; a failed transaction leaves the directory as it was;
- the config and the report's sections round-trip; records_stage marks its stage done.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from distill_export.config import RunConfig
from distill_export.errors import ConfigError
from distill_export.rundir import RUN_STAGES, RunClaimed, RunDir, records_stage

ALL = RUN_STAGES


def _state(run: RunDir) -> dict:
    return json.loads(run.file("state.json").read_text())["stages"]


def _report(run: RunDir) -> dict:
    return json.loads(run.file("report.json").read_text())


@pytest.fixture
def done_run(tmp_path) -> RunDir:
    """A claimed run whose six stages are done, with sections from each in report.json."""
    run = RunDir.create(tmp_path / "r", fresh=True, stages=ALL)
    for s in ALL:
        run.mark_stage(s)
    rep = {**_report(run), "metrics": {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.8}},
           "kd_verdict": "paid", "exports": {"onnx": {"path": "student.onnx", "parity": {"passed": True}}},
           "teacher_exports": {"onnx": {"path": "t.onnx", "parity": {"passed": True}}},
           "timings": {"train_teacher": 1.0, "distill": 2.0, "baseline": 1.0, "export": 3.0, "validate": 1.0, "profile": 1.0},
           "recommended": {"cpu": {"format": "onnx"}}, "dataset": {"name": "x"}}
    run.file("report.json").write_text(json.dumps(rep))
    # each done stage's outputs (a done stage whose output is gone is stale: run_outputs.py)
    for name in ("config.yaml", "latency.csv", "report.md", "report.html", "teacher.pt", "student.pt",
                 "student.onnx", "parity_data.npz"):
        run.file(name).write_text(name)
    return run


def test_a_run_is_claimed_once(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "a" / "r", fresh=True, stages=("train_teacher", "distill"))
    run_id = json.loads(run.file("state.json").read_text())["run_id"]  # the same in both files (run_identity)
    assert _report(run) == {"schema_version": 1, "run_id": run_id} and re.fullmatch(r"[0-9a-f]{16}", run_id)
    assert _state(run) == {"train_teacher": {"status": "pending"}, "distill": {"status": "pending"}}
    assert run.missing_stages() == ["train_teacher", "distill"]
    with pytest.raises(ConfigError):
        RunDir.create(run.path, fresh=True)
    # Between the check and the claim another run may take the folder: the O_EXCL create decides.
    monkeypatch.setattr("distill_export.rundir.check_output", lambda *a, **k: None)
    with pytest.raises(RunClaimed, match=f"--out {run.path} already holds a run"):
        RunDir._claim(run.path, ())
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "report.json").mkdir()  # exists, not creatable
    with pytest.raises(ConfigError, match="cannot be written|already holds"):
        RunDir._claim(tmp_path / "f", ())
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match=f"--out {tmp_path / 'plain'} (is a file|cannot be written)"):
        RunDir._claim(tmp_path / "plain", ())
    assert (tmp_path / "plain").read_text() == "x"


def test_unnamed_runs_take_the_next_free_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunDir.create(None, fresh=True)
    assert first.path.parent.name == "runs" and first.file("report.json").is_file()
    monkeypatch.setattr("distill_export.rundir.default_run_dir", lambda: first.path)
    second, third = RunDir.create(None, fresh=True), RunDir.create(None, fresh=True)
    assert (second.path.name, third.path.name) == (first.path.name + "-2", first.path.name + "-3")
    plain = RunDir.create(tmp_path / "loose", fresh=False)  # not claimed: just a writable folder
    assert plain.path.is_dir() and not plain.file("report.json").exists()


def test_discard_removes_only_a_run_that_finished_nothing(tmp_path):
    run = RunDir.create(tmp_path / "r", fresh=True, stages=ALL)
    run.mark_stage("train_teacher")
    run.discard()
    assert run.path.is_dir() and _state(run)["train_teacher"]["status"] == "done"
    assert _state(run)["train_teacher"]["finished"][:2] == "20"
    other = RunDir.create(tmp_path / "o", fresh=True, stages=ALL)
    other.discard()
    assert not other.path.exists()


def test_a_stage_that_starts_again_makes_its_dependents_stale_and_drops_what_they_wrote(done_run):
    run = done_run
    cfg = RunConfig()
    assert run.begin_stage("validate") == ["report"]
    rep = _report(run)
    assert "recommended" not in rep and "validate" not in rep["timings"] and rep["timings"]["profile"] == 1.0
    assert rep["exports"] == {"onnx": {"path": "student.onnx"}} and rep["teacher_exports"] == {"onnx": {"path": "t.onnx"}}
    assert not run.file("report.md").exists() and not run.file("report.html").exists() and run.file("latency.csv").exists()
    assert _state(run)["report"] == {"status": "stale", "after": "validate"}
    assert _state(run)["validate"] == {"status": "pending"}
    assert run.begin_stage("distill", cfg) == ["export", "profile"]  # validate pending, report stale already
    rep = _report(run)
    assert rep["metrics"] == {"teacher": {"accuracy": 0.9}} and rep["timings"] == {"train_teacher": 1.0}
    assert rep["dataset"] == {"name": "x"} and "exports" not in rep and "kd_verdict" not in rep
    assert not run.file("latency.csv").exists() and run.file("config.yaml").exists()
    state = _state(run)
    assert state["distill"] == {"status": "pending", "config": cfg.to_dict()}  # a training stage keeps its config
    assert state["train_teacher"]["status"] == "done" and state["export"] == {"status": "stale", "after": "distill"}
    run.begin_stage("export", cfg)
    assert "config" not in _state(run)["export"]  # not a training stage
    assert run.begin_stage("tune") == [] and "tune" not in _state(run)
    unrecorded = RunDir(run.path / "sub")
    unrecorded.path.mkdir()
    (unrecorded.path / "report.json").write_text(json.dumps({"schema_version": 1}))
    assert unrecorded.begin_stage("distill") == [] and unrecorded.missing_stages() == []
    unrecorded.require_stages(None, "report")  # nothing recorded: nothing to refuse


def test_a_command_on_a_missing_or_stale_stage_is_refused_saying_what_next(done_run):
    run = done_run
    run.require_stages(("export", "validate"), "profile")
    run.begin_stage("validate")
    with pytest.raises(ConfigError) as info:
        run.require_stages(("validate",), "report")
    assert str(info.value) == (f"{run.path} is unfinished: stage validate did not finish, so `report` cannot run; "
                               f"next: `distill-export validate {run.path}`")
    with pytest.raises(ConfigError) as info:
        run.require_stages(("report",), "serve")
    assert str(info.value) == (f"{run.path}: stage report is stale (validate ran again after it), so `serve` cannot "
                               f"run; next: `distill-export report {run.path}` (or `distill-export run --resume "
                               f"{run.path}` to run every stale stage again)")
    run.mark_stage("validate")
    run.begin_stage("export")
    with pytest.raises(ConfigError) as info:
        run.require_stages(("validate", "profile"), "report")
    assert f"stages validate, profile are stale (export ran again after them)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        run.require_stages(None, "report")
    assert str(info.value).startswith(f"{run.path} is unfinished: stages export, validate, profile did not finish")
    assert run.missing_stages() == ["export", "validate", "profile"]  # planned stages, report aside


def test_a_finished_stage_drops_its_own_checkpoints_only(tmp_path):
    run = RunDir.create(tmp_path / "r", fresh=True, stages=ALL)
    run.drop_checkpoints("distill")  # no folder: nothing to do
    folder = run.path / "checkpoints"
    folder.mkdir()
    mine = ["student.pt", "baseline.pt", "student.expert0.pt", ".student.pt.123.tmp", "control_student_round2.pt"]
    for name in [*mine, "teacher.pt", "teacher.audio.pt"]:
        (folder / name).write_text(name)
    assert run.checkpoint_path("student") == folder / "student.pt"
    run.drop_checkpoints("distill")
    assert sorted(p.name for p in folder.iterdir()) == ["teacher.audio.pt", "teacher.pt"]
    run.drop_checkpoints("export")  # a stage that trains nothing has no checkpoints to drop
    assert sorted(p.name for p in folder.iterdir()) == ["teacher.audio.pt", "teacher.pt"]
    run.drop_checkpoints("train_teacher")
    assert not folder.exists()


def test_resume_refuses_what_it_cannot_continue(tmp_path, done_run):
    for path, says in ((tmp_path / "none", "no such run directory"), (done_run.file("config.yaml"), "is a file")):
        with pytest.raises(ConfigError, match=f"--resume {path}: {says}"):
            RunDir.resumable(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a run directory \\(no report.json\\)"):
        RunDir.resumable(tmp_path / "empty")
    with pytest.raises(ConfigError, match="already finished .*report.md"):
        RunDir.resumable(done_run.path)
    done_run.file("state.json").unlink()
    with pytest.raises(ConfigError, match="does not record its stages"):
        RunDir.resumable(done_run.path)
    early = RunDir.create(tmp_path / "early", fresh=True, stages=ALL)
    with pytest.raises(ConfigError, match="stopped before it wrote config.yaml"):
        RunDir.resumable(early.path)


def test_resume_says_what_it_reuses_and_where_training_continues(done_run):
    run = done_run
    run.begin_stage("distill")
    assert RunDir.resumable(run.path).resume_plan() == (["train_teacher"], ["distill", "export", "validate", "profile", "report"])
    (run.path / "checkpoints").mkdir()
    torch.save({"epoch": 2, "epochs": 5}, run.checkpoint_path("student"))
    torch.save({"epoch": 1, "epochs": 5}, run.checkpoint_path("baseline"))
    summary = run.resume_summary({"baseline": "distill.lr changed"})
    assert summary == (f"resuming {run.path}: train_teacher done (reused); running distill from checkpoints "
                       "(student at epoch 2/5) (baseline at epoch 1/5 restarts from epoch 1: distill.lr changed), "
                       "then export, validate, profile, report (export, validate, profile, report stale: "
                       "distill ran again after them)")
    run.set_stages({s: {"status": "pending"} for s in ALL})
    assert run.resume_plan() == ([], list(ALL))
    assert run.resume_summary() == (f"resuming {run.path}: no stage done; running train_teacher, then distill, "
                                    "export, validate, profile, report")


def test_a_second_lock_on_a_run_is_refused(done_run):
    with done_run.lock() as held:
        assert held is done_run
        with pytest.raises(ConfigError, match="is in use by another distill-export process"):
            with RunDir(done_run.path).lock():
                pass
    with RunDir(done_run.path).lock():  # released
        pass


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_stage_leaves_the_directory_as_it_was(done_run, failure):
    run = done_run
    files = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(failure):
        with run.transaction():
            run.file("report.md").unlink()
            run.file("latency.new").write_text("new")
            os.replace(run.file("latency.new"), run.file("latency.csv"))  # stages write by rename
            (run.path / "plots" / "deep").mkdir(parents=True)
            (run.path / "plots" / "deep" / "a.png").write_text("png")
            run.mark_stage("report")
            raise failure()
    now = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    if failure is RuntimeError:
        assert now == files and not (run.path / "plots").exists()
    else:  # Ctrl-C keeps what the stage wrote
        assert (run.path / "plots" / "deep" / "a.png").exists() and not run.file("report.md").exists()
    assert not (run.path / ".stage-backup").exists()
    with run.transaction():
        run.file("new.txt").write_text("kept")
    assert run.file("new.txt").read_text() == "kept" and not (run.path / ".stage-backup").exists()


def test_config_report_and_existing_run(done_run, tmp_path):
    run = done_run
    cfg = RunConfig()
    cfg.distill.epochs = 7
    run.save_config(cfg)
    assert RunDir.existing(run.path).load_config().distill.epochs == 7
    run.file("config.yaml").write_text("distill: {epochs: lots}\n")
    with pytest.raises(ConfigError, match=f"^{run.file('config.yaml')}: "):
        run.load_config()
    with pytest.raises(ConfigError, match="no config.yaml"):
        RunDir.existing(tmp_path)
    assert run.require("report.json", "report") == run.file("report.json")
    run.file("student.onnx").unlink()
    run.file("teacher.pt").unlink()
    with pytest.raises(ConfigError, match=f"student.onnx is missing; run `distill-export export {run.path}` first"):
        run.require("student.onnx", "export")
    with pytest.raises(ConfigError, match="teacher stage of .* never finished; continue it with `distill-export run --resume"):
        run.require("teacher.pt", "train-teacher")
    bare = RunDir(tmp_path / "bare")
    bare.path.mkdir()
    with pytest.raises(ConfigError, match="never finished; start a new run"):
        bare.require("teacher.pt", "train-teacher")
    run.update_report(dataset={"rows": 3})
    assert run.load_report()["dataset"] == {"name": "x", "rows": 3}  # merged one level deep
    run.replace_report(dataset={"rows": 4})
    assert run.load_record().dataset.model_dump(exclude_unset=True) == {"rows": 4}


def test_records_stage_marks_its_stage_done_and_drops_its_checkpoints(done_run):
    run = done_run
    (run.path / "checkpoints").mkdir()
    run.checkpoint_path("student").write_text("x")
    seen = []

    @records_stage("distill")
    def stage(config, run_dir, extra=1):
        seen.append(_state(run_dir)["distill"] if run_dir else None)
        return extra * 2

    cfg = RunConfig()
    assert stage(cfg, run_dir=run, extra=3) == 6
    assert seen == [{"status": "pending", "config": cfg.to_dict()}]
    assert _state(run)["distill"]["status"] == "done" and _state(run)["export"]["status"] == "stale"
    assert not (run.path / "checkpoints").exists()
    assert stage(cfg, None, 2) == 4 and seen[-1] is None  # no run: just the function


# ----- issue 25, second round: what the first mutmut measure of rundir.py showed unguarded ------

def test_a_claim_takes_an_empty_folder_and_writes_its_record_as_every_report_json(tmp_path, monkeypatch):
    from distill_export.files import write_json

    (tmp_path / "empty").mkdir()
    old = os.umask(0o022)
    try:
        run = RunDir.create(tmp_path / "empty", fresh=True, stages=("train_teacher",))
    finally:
        os.umask(old)
    write_json(tmp_path / "same.json", {"schema_version": 1, "run_id": json.loads(run.file("state.json").read_text())["run_id"]})
    assert run.file("report.json").read_bytes() == (tmp_path / "same.json").read_bytes()
    assert os.stat(run.file("report.json")).st_mode & 0o777 == 0o644  # a plain file: 0o666 less the umask
    monkeypatch.setattr("distill_export.rundir.check_output", lambda *a, **k: None)
    with pytest.raises(RunClaimed) as info:
        RunDir._claim(run.path, ())
    assert str(info.value) == (f"--out {run.path} already holds a run (another run claimed it just now); "
                               "choose a new --out")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError) as info:
        RunDir._claim(tmp_path / "plain", ())
    assert str(info.value) == f"--out {tmp_path / 'plain'} is a file, not a folder; choose another --out"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("distill_export.rundir.os.open", full_disk)
    with pytest.raises(ConfigError) as info:
        RunDir._claim(tmp_path / "new", ())
    assert str(info.value) == f"--out {tmp_path / 'new'} cannot be written: No space left on device"


def test_unnamed_runs_are_named_by_the_second_and_skip_a_name_claimed_meanwhile(tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    first = RunDir.create(None, fresh=True)
    assert re.fullmatch(r"runs/\d{8}-\d{6}", first.path.as_posix())
    base = tmp_path / "runs" / "20260101-000000"
    monkeypatch.setattr("distill_export.rundir.default_run_dir", lambda: base)
    real, raced = RunDir._claim.__func__, []

    def raced_once(cls, target, stages):  # another process claims the free name between check and claim
        if not raced:
            raced.append(target)
            raise RunClaimed(f"--out {target} already holds a run")
        return real(cls, target, stages)

    monkeypatch.setattr(RunDir, "_claim", classmethod(raced_once))
    assert RunDir.create(None, fresh=True).path == base.with_name(base.name + "-2") and raced == [base]
    for i in range(3, 100):
        base.with_name(f"{base.name}-{i}").mkdir()
    base.mkdir()
    with pytest.raises(ConfigError, match="are all taken; choose a --out"):
        RunDir.create(None, fresh=True)
    assert not base.with_name(base.name + "-100").exists()
    loose = RunDir.create(tmp_path / "loose")  # not fresh unless asked: just a writable folder
    assert loose.path.is_dir() and not loose.file("report.json").exists()


def test_discard_twice_is_harmless_and_stage_times_are_iso(tmp_path):
    import re

    run = RunDir.create(tmp_path / "r", fresh=True, stages=ALL)
    run.discard()
    run.discard()  # already gone: nothing to do, no error
    assert not run.path.exists()
    run = RunDir.create(tmp_path / "r2", fresh=True, stages=ALL)
    run.mark_stage("distill")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", _state(run)["distill"]["finished"])


def test_a_stage_that_starts_again_keeps_what_other_stages_wrote(done_run):
    run = done_run
    before = _report(run)
    run.file("latency.csv").unlink()  # a stage's file already gone is no error when it is dropped
    assert run.begin_stage("profile") == ["report"]
    rep = _report(run)
    assert rep["metrics"] == before["metrics"] and rep["exports"] == before["exports"]  # parity is validate's
    assert rep["teacher_exports"] == before["teacher_exports"] and rep["kd_verdict"] == "paid"
    assert "recommended" not in rep and "profile" not in rep["timings"]
    run.mark_stage("profile")
    run.begin_stage("validate")
    assert _report(run)["metrics"] == before["metrics"]  # only distill drops the student's metrics
    assert run.begin_stage("train_teacher", RunConfig()) == ["distill", "export", "profile"]
    rep = _report(run)
    assert rep["metrics"] == {"teacher": {"accuracy": 0.9}} and rep["timings"] == {"train_teacher": 1.0}
    assert set(_state(run)) == set(ALL) and _state(run)["validate"] == {"status": "pending"}


def test_stages_a_run_never_planned_count_as_not_done(tmp_path):
    run = RunDir.create(tmp_path / "r", fresh=True, stages=("train_teacher", "distill"))  # like train-teacher
    run.file("config.yaml").write_text("seed: 0\n")
    run.file("teacher.pt").write_text("t")
    run.mark_stage("train_teacher")
    run.mark_stage("distill")
    run.file("student.pt").write_text("s")
    assert run.missing_stages(("export",)) == ["export"] and run.missing_stages() == []
    with pytest.raises(ConfigError) as info:
        run.require_stages(("export", "validate"), "profile")
    assert str(info.value) == (f"{run.path} is unfinished: stages export, validate did not finish, so `profile` "
                               f"cannot run; next: `distill-export export {run.path}`")
    assert RunDir.resumable(run.path).resume_plan() == (["train_teacher", "distill"],
                                                        ["export", "validate", "profile", "report"])
    assert run.resume_summary() == (f"resuming {run.path}: train_teacher, distill done (reused); running export, "
                                    "then validate, profile, report")
    assert run.begin_stage("distill") == [] and run.drop_checkpoints("export") is None


def test_a_command_is_refused_only_for_the_outputs_it_builds_on(done_run):
    run = done_run
    run.file("student.onnx").unlink()  # export's output
    run.require_stages(("train_teacher",), "distill")  # distill needs the teacher only
    with pytest.raises(ConfigError) as info:
        run.require_stages(("export",), "validate")
    assert str(info.value) == (f"{run.file('student.onnx')} is missing (the export stage made it), so `validate` "
                               f"cannot run; re-run `distill-export export {run.path}`")


def test_resume_plans_from_the_first_unfinished_stage_report_included(done_run):
    run = done_run
    assert run.resume_plan() == (list(ALL), [])  # nothing to run
    run.set_stages({**_state(run), "report": {"status": "pending"}})
    assert RunDir.resumable(run.path).resume_plan() == (list(ALL[:-1]), ["report"])
    assert run.resume_summary().endswith("profile done (reused); running report")
    run.set_stages({**_state(run), "profile": {"status": "pending"}})
    assert run.resume_summary().endswith("validate done (reused); running profile, then report")


def test_resume_summary_names_every_checkpoint_and_the_first_stale_stages_reason(done_run):
    run = done_run
    run.set_stages({**_state(run), "distill": {"status": "pending"}, "export": {"status": "stale", "after": "distill"},
                    "validate": {"status": "stale", "why": "student.onnx changed after validate"}})
    (run.path / "checkpoints").mkdir()
    for label, epoch in (("student", 2), ("baseline", 3), ("control_teacher", 1), ("control_student", 1)):
        torch.save({"epoch": epoch, "epochs": 5}, run.checkpoint_path(label))
    assert run.resume_summary({"control_teacher": "seed changed", "control_student": "seed changed"}) == (
        f"resuming {run.path}: train_teacher done (reused); running distill from checkpoints (student at epoch 2/5, "
        "baseline at epoch 3/5) (control_teacher at epoch 1/5 restarts from epoch 1: seed changed; control_student "
        "at epoch 1/5 restarts from epoch 1: seed changed), then export, validate, profile, report (export, validate "
        "stale: distill ran again after them)")
    run.checkpoint_path("student").unlink()
    assert "(student restarts from epoch 1: distill.lr changed)" in run.resume_summary({"student": "distill.lr changed"})


def test_resume_refusals_are_one_line_saying_what_to_do(tmp_path, done_run):
    with pytest.raises(ConfigError) as info:
        RunDir.resumable(done_run.path)
    assert str(info.value) == (f"--resume {done_run.path}: the run already finished (every stage is done); "
                               f"its report is {done_run.path / 'report.md'}")
    done_run.file("state.json").write_text(json.dumps({"stages": ["train_teacher"]}))  # not a stage record
    with pytest.raises(ConfigError) as info:  # a hand edit, not an older version (fifty-fourth audit B3)
        RunDir.resumable(done_run.path)
    assert str(info.value).startswith(f"{done_run.file('state.json')} is corrupt: `stages` must be a mapping")
    done_run.file("state.json").unlink()  # an older version's run: no state.json, no stages in report.json
    assert "stages" not in json.loads(done_run.file("report.json").read_text())
    assert done_run.stages() is None
    with pytest.raises(ConfigError) as info:
        RunDir.resumable(done_run.path)
    assert str(info.value) == (f"--resume {done_run.path}: the run does not record its stages (made by an older "
                               "version); start a new run")
    early = RunDir.create(tmp_path / "early", fresh=True, stages=ALL)
    with pytest.raises(ConfigError) as info:
        RunDir.resumable(early.path)
    assert str(info.value) == (f"--resume {early.path}: the run was stopped before it wrote config.yaml, so there "
                               "is nothing to resume; start a new run (`distill-export run --out NEW`)")


def test_a_run_made_before_state_json_keeps_its_stages_and_moves_them_on_the_first_write(tmp_path):
    old = {"train_teacher": {"status": "done"}, "distill": {"status": "pending"}}
    run = RunDir(tmp_path)
    run.file("report.json").write_text(json.dumps({"stages": old, "dataset": {"name": "x"}}))
    assert run.stages() == old and run.missing_stages() == ["distill"]
    written = run.update_report(dataset={"rows": 3})
    assert written == run.load_report() and written["dataset"] == {"name": "x", "rows": 3}
    assert _state(run) == old and "stages" not in _report(run)
    state_now = {"train_teacher": {"status": "done"}, "distill": {"status": "done"}}
    run.set_stages(state_now)  # state.json is the record from now on: an old copy never overwrites it
    run.file("report.json").write_text(json.dumps({"stages": old}))
    run.update_report(dataset={"rows": 4})
    assert _state(run) == state_now


def test_config_is_saved_in_its_own_order_and_a_bad_one_is_named(done_run):
    import yaml

    run = done_run
    run.save_config(RunConfig())
    assert list(yaml.safe_load(run.file("config.yaml").read_text())) == list(RunConfig().to_dict())
    run.file("config.yaml").write_text("distill: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        run.load_config()
    assert str(info.value).startswith(f"run config {run.file('config.yaml')} is not valid YAML")


def test_require_names_the_missing_file_and_how_to_get_it(done_run, tmp_path):
    run = done_run
    run.file("teacher.pt").unlink()
    with pytest.raises(ConfigError) as info:
        run.require("teacher.pt", "train-teacher")
    assert str(info.value) == (f"{run.file('teacher.pt')} is missing: the teacher stage of {run.path} never finished; "
                               f"continue it with `distill-export run --resume {run.path}` (or start a new run with "
                               "`distill-export run --out NEW`)")
    bare = RunDir(tmp_path / "bare")
    bare.path.mkdir()
    with pytest.raises(ConfigError) as info:
        bare.require("teacher.pt", "train-teacher")
    assert str(info.value) == (f"{bare.file('teacher.pt')} is missing: the teacher stage of {bare.path} never "
                               "finished; start a new run (`distill-export run --out NEW` or `train-teacher --out NEW`)")
