"""`run --resume` after a kill (issue 11, items 3 and 5).

A real `distill-export run` in a subprocess is killed (SIGKILL, or SIGTERM) at a known epoch
checkpoint, `run --resume` finishes it, and its report.json must equal an uninterrupted run's:
the metrics (accuracies, confusion matrices, kd_gain) and every training history (per-epoch
train loss and validation accuracy of teacher, student, baseline and the self-training
control), which differ at the first wrong bit of state (weights, optimiser, schedule, any RNG).

The data is a small manifest (tiny images and tones), so the three runs take seconds; the kill
point is made exact by a wrapper that pauses the subprocess right after it wrote a chosen
checkpoint (no hook in the product). The config is TINY_CONFIG's with 2 teacher and 3 distill
epochs, 50% of labels kept, and the self-training control on (the demo recipe's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _byo_fixtures import class_image, tone, write_png, write_rows, write_wav
from _cli_checks import one_line_error
from conftest import TINY_CONFIG
from distill_export.cli import app

runner = CliRunner()

CONFIG = {**TINY_CONFIG, "teacher": {**TINY_CONFIG["teacher"], "epochs": 2},
          "distill": {"epochs": 3, "self_training_control": True},
          "data": {**TINY_CONFIG["data"], "label_fraction": 0.5}}

# Runs the CLI; with RESUME_TEST_PAUSE=<checkpoint file name>:<epoch> it writes the marker file
# RESUME_TEST_MARKER right after that checkpoint is on disk and then waits to be killed.
WRAPPER = """
import os, sys, time
from pathlib import Path
import distill_export.train as train
pause = os.environ.get("RESUME_TEST_PAUSE")
if pause:
    name, epoch = pause.rsplit(":", 1)
    save = train._save_checkpoint
    def paused(path, state):
        save(path, state)
        if Path(path).name == name and state["epoch"] == int(epoch):
            Path(os.environ["RESUME_TEST_MARKER"]).write_text("")
            time.sleep(600)
    train._save_checkpoint = paused
from distill_export.cli import app
app(sys.argv[1:], prog_name="distill-export")
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user runs it (every run here starts from a fresh
    interpreter, so the comparison cannot depend on state a test left in this one)."""
    return subprocess.run([sys.executable, "-m", "distill_export.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _manifest(root: Path) -> Path:
    """3 classes x 30 rows: 18 train, 4 val, 8 test per class."""
    rows = []
    for k, name in enumerate(("cat", "dog", "owl")):
        for i in range(30):
            img, wav = f"img/{name}_{i}.png", f"wav/{name}_{i}.wav"
            write_png(root / img, class_image(k, seed=i))
            write_wav(root / wav, tone(400 * (k + 1), seed=i))
            rows.append({"image": img, "audio": wav, "label": name,
                         "split": "train" if i < 18 else "val" if i < 22 else "test"})
    return write_rows(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    manifest = _manifest(root / "data")
    return root, ["--config", str(cfg), "--data", str(manifest), "--quiet"]


@pytest.fixture(scope="module")
def reference(setup) -> dict:
    """report.json of an uninterrupted run."""
    root, args = setup
    out = root / "reference"
    result = _cli("run", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "checkpoints").exists()  # spent once each stage finished
    return json.loads((out / "report.json").read_text())


def _compared(report: dict) -> dict:
    d = report["distill"]
    control = d["self_training_control"]
    return {
        "metrics": {m: report["metrics"][m] for m in ("teacher", "student", "baseline", "self_training")},
        "kd_gain": report["kd_gain"],
        "teacher_history": report["teacher"]["training"]["history"],
        "student": d["student_training"], "baseline": d["baseline_training"],
        "control": {"teacher_accuracy": control["teacher_accuracy"], "teacher": control["teacher_training"],
                    "student": control["student_training"]},
        "modality_probe": report["teacher"]["modality_probe"],
    }


def _start_paused(args: list[str], out: Path, pause: str) -> subprocess.Popen:
    """`run --out out` in a subprocess, paused just after checkpoint `pause` was written."""
    marker = out.parent / f"{out.name}.paused"
    env = {**os.environ, "RESUME_TEST_PAUSE": pause, "RESUME_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"the run did not reach {pause}: {stdout[-2000:]} {stderr[-2000:]}")
        time.sleep(0.05)
    return proc


@pytest.mark.slow  # real runs in subprocesses (~20 s each on 2 busy cores)
def test_sigkill_during_student_training_then_resume_gives_the_same_metrics(setup, reference):
    root, args = setup
    out = root / "killed"
    proc = _start_paused(args, out, "student.pt:1")
    proc.kill()  # SIGKILL: no cleanup runs
    proc.communicate(timeout=180)  # a loaded CI machine: the exit, not its speed, is under test
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "student.pt").is_file()
    assert not (out / "checkpoints" / "teacher.pt").exists()  # the teacher stage finished: its checkpoint is spent

    # the killed run is refused by `run --out`, and the message says how to go on
    line = one_line_error(runner.invoke(app, ["run", "--out", str(out), *args]))
    assert "already holds a run" in line and f"run --resume {out}" in line

    result = _cli("run", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    said = [x for x in result.stderr.splitlines() if x.startswith("resuming")]
    assert said == [f"resuming {out}: train_teacher done (reused); running distill from checkpoints "
                    "(student at epoch 1/3), then export, validate, profile, report"], result.stderr
    report = json.loads((out / "report.json").read_text())
    assert _compared(report) == _compared(reference)
    stages = json.loads((out / "state.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" for s in stages)
    assert report["resumed"][0]["from_stage"] == "distill"
    assert not (out / "checkpoints").exists()
    # finished: a second --resume has nothing to do
    assert "already finished" in one_line_error(runner.invoke(app, ["run", "--resume", str(out)]))


@pytest.mark.slow  # real runs in subprocesses (~20 s each on 2 busy cores)
def test_sigterm_is_one_line_and_the_run_resumes(setup, reference):
    """SIGTERM while the self-training control's teacher trains (student and baseline are done
    but not saved: they come back from their last checkpoints)."""
    root, args = setup
    out = root / "terminated"
    proc = _start_paused(args, out, "control_teacher.pt:1")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)  # a loaded CI machine: the exit, not its speed, is under test
    assert proc.returncode == 143, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert [x for x in stderr.splitlines() if x.strip()][-1] == "terminated (SIGTERM)", stderr
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"student.pt", "baseline.pt", "control_teacher.pt"}

    result = _cli("run", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("running distill from checkpoints (student at epoch 3/3, baseline at epoch 3/3, "
            "control_teacher at epoch 1/2)") in result.stderr
    assert _compared(json.loads((out / "report.json").read_text())) == _compared(reference)
    assert not (out / "checkpoints").exists()


@pytest.mark.slow  # real runs in subprocesses (~20 s each on 2 busy cores)
def test_kill_after_training_resumes_the_later_stages(setup, reference, tmp_path):
    """A run killed after distill (export not recorded): resume reuses teacher and students and
    runs export onwards, with the same metrics."""
    import shutil

    from distill_export.rundir import RunDir

    root, _ = setup
    out = tmp_path / "run"
    shutil.copytree(root / "reference", out)
    rd = RunDir(out)
    stages = rd.stages()
    for s in ("export", "validate", "profile", "report"):
        stages[s] = {"status": "pending"}
    rd.set_stages(stages)
    (out / "student.onnx").unlink()
    before = {p: (out / p).read_bytes() for p in ("teacher.pt", "student.pt", "baseline.pt")}
    result = _cli("run", "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {out}: train_teacher, distill done (reused); running export, then validate" in result.stderr
    assert (out / "student.onnx").is_file()
    assert {p: (out / p).read_bytes() for p in before} == before  # reused, not retrained
    report = json.loads((out / "report.json").read_text())
    assert _compared(report) == _compared(reference)
    assert all(v["status"] == "done" for v in json.loads((out / "state.json").read_text())["stages"].values())


# ----- refusals: one line, exit 2, nothing changed ------------------------------------------------
@pytest.fixture
def killed_run(tmp_path):
    """A run directory as `run` leaves it when killed during distillation (no training needed)."""
    from distill_export.config import load_config
    from distill_export.rundir import RUN_STAGES, RunDir

    rd = RunDir.create(tmp_path / "run", fresh=True, stages=RUN_STAGES)
    cfg = load_config("avdigits", None, {"distill.epochs": 3, "teacher.epochs": 2})
    rd.save_config(cfg)
    rd.mark_stage("train_teacher")
    return rd.path


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags,keys", [
    (["--epochs", "5"], ["distill.epochs"]),
    (["-T", "2", "--seed", "3"], ["seed", "distill.temperature"]),
    (["--no-self-training-control"], ["distill.self_training_control"]),
])
def test_resume_with_changed_flags_names_the_keys(killed_run, flags, keys):
    before = _files(killed_run)
    line = one_line_error(runner.invoke(app, ["run", "--resume", str(killed_run), *flags]))
    assert "differs from the run's config.yaml" in line
    for key in keys:
        assert f"{key}: run " in line, line
    assert _files(killed_run) == before


def test_resume_with_a_changed_config_file_names_the_keys(killed_run, tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"epochs": 2}, "distill": {"epochs": 4, "lr": 0.01}}))
    line = one_line_error(runner.invoke(app, ["run", "--resume", str(killed_run), "--config", str(cfg)]))
    assert "2 keys" in line and "distill.epochs: run 3, given 4" in line and "distill.lr" in line
    # the same settings as a file are accepted (only the run's own config decides)
    from distill_export.launch import resume_config

    cfg.write_text(yaml.safe_dump({"teacher": {"epochs": 2}, "distill": {"epochs": 3}}))
    rd, config = resume_config(killed_run, None, cfg, {"distill.epochs": 3})
    assert rd.path == killed_run and config.distill.epochs == 3


def test_resume_refuses_what_is_not_an_unfinished_run(tmp_path, killed_run):
    from distill_export.rundir import RUN_STAGES, RunDir

    (tmp_path / "empty").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    (tmp_path / "file").write_text("x")
    for target, needle in [(tmp_path / "nowhere", "no such run directory"), (tmp_path / "empty", "not a run directory"),
                           (tmp_path / "mine", "not a run directory"), (tmp_path / "file", "is a file")]:
        line = one_line_error(runner.invoke(app, ["run", "--resume", str(target)]))
        assert needle in line, line
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes"

    finished = RunDir.create(tmp_path / "finished", fresh=True, stages=RUN_STAGES)
    finished.save_config(RunDir(killed_run).load_config())
    for s in RUN_STAGES:
        finished.mark_stage(s)
    for name in ("teacher.pt", "student.pt", "parity_data.npz"):  # its stages' outputs (a gone one is re-made)
        finished.file(name).write_bytes(b"x")
    assert "already finished" in one_line_error(runner.invoke(app, ["run", "--resume", str(finished.path)]))

    claimed = RunDir.create(tmp_path / "claimed", fresh=True, stages=RUN_STAGES)  # killed before config.yaml
    assert "before it wrote config.yaml" in one_line_error(runner.invoke(app, ["run", "--resume", str(claimed.path)]))

    line = one_line_error(runner.invoke(app, ["run", "--resume", str(killed_run), "--out", str(tmp_path / "x")]))
    assert "drop --out" in line


def test_resume_of_a_run_that_is_still_going_is_refused(killed_run):
    from distill_export.rundir import RunDir

    before = _files(killed_run)
    with RunDir(killed_run).lock():  # what a live `run` holds while it works
        line = one_line_error(runner.invoke(app, ["run", "--resume", str(killed_run)]))
    assert "in use by another distill-export process" in line
    assert _files(killed_run) == before


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    """A checkpoint keyed for other settings (e.g. a `distill RUN -T 7` that was interrupted) is
    ignored: the training starts afresh rather than continuing another one."""
    import torch

    from distill_export.train import Checkpoint, TrainSpec, train_loop

    def train(ckpt, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)), torch.arange(20) % 3

        def on_epoch(epoch, acc):
            if epoch == stop_at:
                raise KeyboardInterrupt

        try:
            return train_loop([model], lambda rows: torch.nn.functional.cross_entropy(model(x[rows]), y[rows]), 20,
                              lambda: float((model(x).argmax(1) == y).float().mean()), TrainSpec(3, 0.01, 8), "m",
                              quiet=True, on_epoch=on_epoch, checkpoint=ckpt).history
        except KeyboardInterrupt:
            return None

    plain = train(None)
    assert train(Checkpoint(tmp_path / "m.pt", "T=7"), stop_at=2) is None
    assert torch.load(tmp_path / "m.pt", weights_only=True)["epoch"] == 2
    assert train(Checkpoint(tmp_path / "m.pt", "T=4")) == plain  # afresh, not from T=7's epoch 2
    assert train(Checkpoint(tmp_path / "m.pt", "T=4")) == plain  # and its own finished checkpoint


def test_resume_restores_the_batch_order_and_the_random_state(tmp_path):
    """Stopped after epoch 1 and resumed, a training equals the uninterrupted one, parameters
    and history. Dropout draws from torch's RNG and the loop draws its batch order from its own
    generator: a resume that skipped either state would train on other batches or other masks."""
    import torch

    from distill_export.train import Checkpoint, TrainSpec, train_loop

    def train(ckpt, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
        x, y = torch.randn(24, 4, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3

        def on_epoch(epoch, acc):
            if epoch == stop_at:
                torch.rand(7)  # the interrupted process's RNG moves on before it dies
                raise KeyboardInterrupt

        try:
            train_loop([model], lambda rows: torch.nn.functional.cross_entropy(model(x[rows]), y[rows]), 24,
                       lambda: float((model(x).argmax(1) == y).float().mean()), TrainSpec(3, 0.05, 5), "m",
                       quiet=True, on_epoch=on_epoch, checkpoint=ckpt)
        except KeyboardInterrupt:
            return None
        return [p.detach().clone() for p in model.parameters()]

    plain = train(None)
    assert train(Checkpoint(tmp_path / "m.pt", "k"), stop_at=1) is None
    resumed = train(Checkpoint(tmp_path / "m.pt", "k"))
    for a, b in zip(plain, resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
