"""One fast test per promise the README makes about training, gates, the CLI, export and data.

Each test is at the level of behaviour (what the optimiser, the saved files or the ONNX graph
show), on tiny synthetic data, in seconds. `tools/mutations.yaml` lists, for each promise, a
small code change that breaks it and the tests here that must catch it
(`python tools/mutation_check.py`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _byo_fixtures import make_manifest, synthetic_dataset
from distill_export import distill
from distill_export.config import RunConfig, ValidateConfig, load_config
from distill_export.data.dataset import IGNORE_INDEX
from distill_export.distill import train_baseline, train_student
from distill_export.nets.model_io import load_student, save_student
from distill_export.rundir import RunDir

CPU = torch.device("cpu")
runner = CliRunner()


def _config(epochs: int = 2, batch_size: int = 5, **distill_values) -> RunConfig:
    cfg = RunConfig()
    cfg.device = "cpu"
    cfg.distill.epochs = epochs
    cfg.distill.batch_size = batch_size
    cfg.teacher.epochs = 1
    cfg.teacher.batch_size = 8
    cfg.teacher.width = 4
    for key, value in distill_values.items():
        setattr(cfg.distill, key, value)
    return cfg


def _data(label_fraction: float = 1.0, n: int = 24):
    """synthetic_dataset with the labels of all but the first `label_fraction` of train rows hidden."""
    data = synthetic_dataset(n=n)
    kept = max(1, round(label_fraction * n))
    data.train.labels[kept:] = IGNORE_INDEX
    return data


@pytest.fixture
def steps(monkeypatch):
    """Every optimiser step, per optimiser (in creation order): its count and the parameters
    it saw at its first step (the initial weights: gradients are computed, nothing applied)."""
    log: dict[int, dict] = {}

    def pre_hook(opt, args, kwargs):
        entry = log.setdefault(id(opt), {"steps": 0, "first": None})
        if entry["first"] is None:
            entry["first"] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        entry["steps"] += 1

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(pre_hook)
    yield log
    handle.remove()


def _teacher_logits(data, seed: int = 1) -> torch.Tensor:
    return torch.randn(len(data.train), data.num_outputs, generator=torch.Generator().manual_seed(seed)) * 3


# ----- same steps, same initial weights ----------------------------------------------------


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1])
def test_baseline_and_student_take_the_same_steps_from_the_same_weights(fraction, steps):
    data = _data(fraction)
    cfg = _config(epochs=2, batch_size=5)
    train_student(cfg, data, _teacher_logits(data), None, CPU, quiet=True)
    train_baseline(cfg, data, CPU, quiet=True)
    student, baseline = steps.values()  # one optimiser each, in the order they were made
    # 24 rows in batches of 5 = 5 steps per epoch, for the student (every row) and for the
    # baseline, which sees only the labeled rows (2 of 24 at 10%) but as many batches.
    assert student["steps"] == baseline["steps"] == 2 * math.ceil(24 / 5)
    assert len(student["first"]) == len(baseline["first"])
    for a, b in zip(student["first"], baseline["first"]):
        assert torch.equal(a, b)


def test_a_labels_only_objective_trains_exactly_as_the_baseline():
    """What tune writes when distilling is not confirmed (ce alone): train_student must give the
    baseline's weights, not a student whose batches mix in unlabeled rows with their CE masked."""
    data = _data(0.25)
    cfg = _config(epochs=2, batch_size=5, method="labels_only")
    student, info = train_student(cfg, data, _teacher_logits(data), None, CPU, quiet=True)
    baseline, _ = train_baseline(cfg, data, CPU, quiet=True)
    assert info["distilled"] is False
    for k, v in baseline.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k


# ----- best validation epoch -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["student", "baseline"])
def test_the_best_validation_epoch_is_what_is_returned_and_saved(which, monkeypatch, tmp_path):
    """Validation accuracy scripted as 0.2, 0.9, 0.5: epoch 2's weights must come back and be saved."""
    scripted = iter([0.2, 0.9, 0.5])
    snapshots: list[dict] = []

    def fake_val(model, data, modality, device, task):
        def val_accuracy():
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return next(scripted)
        return val_accuracy

    monkeypatch.setattr(distill, "_val_score_fn", fake_val)
    data = _data(0.5)
    cfg = _config(epochs=3)
    if which == "student":
        model, info = train_student(cfg, data, _teacher_logits(data), None, CPU, quiet=True)
    else:
        model, info = train_baseline(cfg, data, CPU, quiet=True)
    assert info["best_epoch"] == 2 and [h["val_accuracy"] for h in info["history"]] == [0.2, 0.9, 0.5]
    assert len(snapshots) == 3
    changed = [k for k in snapshots[1] if not torch.equal(snapshots[1][k], snapshots[2][k])]
    assert changed, "epoch 3 did not change the weights: the check below would be vacuous"
    state = model.state_dict()
    for k, v in snapshots[1].items():
        assert torch.equal(state[k], v), k
    save_student(tmp_path / "s.pt", model, cfg, data, "t", {}, {"class_names": data.target_names})
    saved, _ = load_student(tmp_path / "s.pt")
    for k, v in snapshots[1].items():
        assert torch.equal(saved.state_dict()[k], v), k


# ----- parity gates at their limits ----------------------------------------------------------


def _gate_names() -> dict:
    """config key -> (precision, metric, kind) of the classification task's gates."""
    from distill_export.tasks import get_task

    return {g.config_key: (g.precision, g.metric, g.kind) for g in get_task("classification").gates}


def _gate_cases():
    return list(_gate_names())


@pytest.mark.parametrize("key", _gate_cases())
def test_every_gate_passes_exactly_at_its_limit_and_fails_just_past_it(key, monkeypatch):
    """The artifact's metric, measured by validate_artifact, is made the gate's limit: PASS.
    The limit moved by one float ulp towards strict: FAIL (and the artifact fails)."""
    from distill_export import validate
    from distill_export.tasks import get_task
    from distill_export.validate import validate_artifact

    task = get_task("classification")
    GATE_NAMES = _gate_names()
    precision, metric, kind = GATE_NAMES[key]
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((200, 10)).astype(np.float32)
    labels = reference.argmax(1)
    candidate = reference + np.float32(0.01) * rng.standard_normal(reference.shape).astype(np.float32)
    candidate[:3] = np.roll(reference[:3], 1, axis=1)  # 3 of 200 rows flipped: agreement 0.985, drop 0.015
    monkeypatch.setattr(validate, "make_runner", lambda *a, **k: (lambda x, bs: candidate))
    value = task.parity_metrics(candidate, reference, labels)[metric]
    assert 0 < value < 1e3  # a real value, not a degenerate one
    parity = {"x": np.zeros((200, 1), np.float32), "labels": labels, "reference": reference}
    artifact = {"path": "fake.onnx", "runtime": "onnxruntime", "precision": precision, "format": "fake"}

    def run_with(limit):
        cfg = ValidateConfig(batch_sizes=[1, 64])
        for other, (prec, _, other_kind) in GATE_NAMES.items():  # every other gate wide open
            if prec == precision and other != key:
                setattr(cfg, other, 1e9 if other_kind == "max" else 0.0)
        setattr(cfg, key, limit)
        return validate_artifact(artifact, parity, cfg, task, None)

    at = run_with(value)
    assert at["gates"][metric] == {"value": value, "limit": value, "kind": kind, "passed": True}
    assert at["passed"] is True
    past = run_with(float(np.nextafter(value, -np.inf if kind == "max" else np.inf)))
    assert past["gates"][metric]["passed"] is False and past["passed"] is False


# ----- `run` exits 1 after writing the report ------------------------------------------------


@pytest.mark.slow
def test_run_with_a_failed_gate_writes_the_report_then_exits_1(tmp_path, monkeypatch):
    """validate.fp32_max_abs: 0 (the strictest limit the config accepts) from --config. ONNX
    Runtime's logits are nudged by 1e-6 so the gate cannot pass by a bitwise-equal chance."""
    import yaml

    from distill_export.runtimes import onnx_runtime as runtimes
    from distill_export.cli import app

    real_run_onnx = runtimes.run_onnx
    monkeypatch.setattr(runtimes, "run_onnx", lambda *a, **k: real_run_onnx(*a, **k) + np.float32(1e-6))
    manifest = make_manifest(tmp_path / "data", per_class=6, modalities=("image", "audio"))
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(yaml.safe_dump({
        "teacher": {"epochs": 1, "width": 4}, "distill": {"epochs": 1},
        "validate": {"fp32_max_abs": 0.0, "batch_sizes": [1]},
        "profile": {"batches": [1], "threads": [1], "warmup_s": 0.0, "min_time_s": 0.0, "min_iters": 1},
    }))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--data", str(manifest), "--config", str(cfg), "--format", "onnx",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "parity gates failed" in result.output
    report = json.loads((out / "report.json").read_text())
    gate = report["exports"]["onnx"]["parity"]["gates"]["max_abs_diff"]
    assert gate["passed"] is False and gate["limit"] == 0.0 and gate["value"] > 0
    stages = json.loads((out / "state.json").read_text())["stages"]
    assert stages["report"]["status"] == "done"  # the report stage ran before the exit
    assert "FAIL" in (out / "report.md").read_text()
    assert (out / "report.html").stat().st_size > 0


# ----- every CLI flag lands on its config key ------------------------------------------------

# Python parameter -> (command-line arguments, dotted config key, the value it must hold).
# Values differ from the defaults and from each other, so a flag wired to another key shows.
def _register_flag_test_task():
    """A second task, so --task has a value other than the default to land."""
    from distill_export.tasks import Task, register_task

    @register_task
    class FlagTestTask(Task):
        name = "flag_test_task"


_register_flag_test_task()

FLAGS = {
    "out": (["--out", "runs/flag-test"], "out", "runs/flag-test"),
    "student": (["--student", "mobilenet_v3_small"], "student.name", "mobilenet_v3_small"),
    "student_init": (["--student-init", "init.pt"], "student.init_weights", "init.pt"),
    "teacher": (["--teacher", "pkg.mod:make"], "teacher.path", "pkg.mod:make"),
    # (with a factory teacher: the weights of any other teacher are refused, config_checks._check_teacher_weights)
    "teacher_weights": (["--teacher-weights", "tw.pt", "--teacher", "pkg.mod:make"], "teacher.weights", "tw.pt"),
    "device": (["--device", "cpu"], "device", "cpu"),
    "seed": (["--seed", "7"], "seed", 7),
    "task": (["--task", "flag_test_task"], "task", "flag_test_task"),  # registered below
    "epochs": (["--epochs", "3"], "distill.epochs", 3),
    "teacher_epochs": (["--teacher-epochs", "4"], "teacher.epochs", 4),
    # (with a method that reads it: the recipe's pseudo_label has no temperature, flag_checks._check_objective_flags)
    "temperature": (["--temperature", "2.5", "--method", "hinton"], "distill.temperature", 2.5),
    "alpha": (["--alpha", "0.3"], "distill.alpha", 0.3),
    "beta": (["--beta", "0.2"], "distill.beta", 0.2),
    "label_fraction": (["--label-fraction", "0.6"], "data.label_fraction", 0.6),
    "format": (["--format", "onnx,onnx-int8"], "export.formats", ["onnx", "onnx-int8"]),
    "data": (["--data", "m.csv"], "data.source", "m.csv"),
    "student_modality": (["--student-modality", "audio"], "data.student_modality", "audio"),
    # (with a manifest: a built-in source has no rows to skip, flag_checks.check_flags_apply)
    "skip_bad_rows": (["--skip-bad-rows", "--data", "m.csv"], "data.skip_bad_rows", True),
    "augment": (["--augment", "shift"], "distill.augment", "shift"),
    "mix": (["--mix", "mixup"], "distill.mix", "mixup"),
    "tune": (["--tune", "5"], "distill.tune_trials", 5),
    "tune_minutes": (["--tune-minutes", "2.5"], "distill.tune_minutes", 2.5),
    # (with a search: --tune-search alone is refused, flag_checks.check_flags_apply)
    "tune_search": (["--tune-search", "terms,mix", "--tune", "5"], "distill.tune_search", "terms,mix"),
    "method": (["--method", "dkd"], "distill.method", "dkd"),
    "teacher_fusion": (["--teacher-fusion", "late"], "teacher.fusion", "late"),
    # (the demo recipe turns the control on, so the flag that changes it is the negative one)
    "self_training_control": (["--no-self-training-control"], "distill.self_training_control", False),
    "rounds": (["--rounds", "2"], "distill.rounds", 2),
    "opset": (["--opset", "19"], "export.opset", 19),
    "exporter": (["--exporter", "torchscript"], "export.exporter", "torchscript"),
    # (with an INT8 format: a calibration flag without one is refused, preflight.check_flags_apply)
    "calibration_samples": (["--calibration-samples", "64", "--format", "onnx-int8"], "export.calibration_samples", 64),
    "calibration_method": (["--calibration-method", "entropy", "--format", "onnx-int8"], "export.calibration_method",
                           "entropy"),
    "compile": (["--compile"], "distill.compile", True),
}
# The commands that map flags to config keys (cli/options.py FLAGS); options that set no config
# key are declared in cli/options.py NOT_CONFIG (tests/test_cli_options.py checks both tables).
CONFIG_COMMANDS = ("run", "train-teacher", "distill", "export")


def _command_params() -> dict[str, list[str]]:
    import typer.main

    from distill_export.cli import app
    from distill_export.cli.options import NOT_CONFIG

    group = typer.main.get_command(app)
    return {name: [p.name for p in group.commands[name].params if p.name not in NOT_CONFIG]
            for name in CONFIG_COMMANDS}


def test_every_config_flag_of_every_command_is_in_the_table():
    for command, params in _command_params().items():
        assert set(params) <= set(FLAGS), (command, sorted(set(params) - set(FLAGS)))


class _Stop(Exception):
    """Raised where the command would start working: carries the config it built."""


def _flattened(cfg) -> dict:
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", cfg.to_dict())
    return out


@pytest.mark.parametrize("command,param", [(c, p) for c, ps in _command_params().items() for p in ps])
def test_every_cli_flag_lands_on_its_config_key(command, param, monkeypatch, tmp_path):
    from distill_export import preflight
    from distill_export.cli import app

    default = load_config("avdigits", None, {})
    seen = {}

    def stop(cfg, *a, **k):
        seen["cfg"] = cfg
        raise _Stop()

    monkeypatch.setattr(preflight, "check_config", stop)  # run, train-teacher: right after the config is built
    stage_config = load_config("avdigits", None, {})

    class FakeRun:  # distill, export: the run directory's config, then the flags on it
        def load_config(self):
            return stage_config

        def written_config(self):  # a run made before hand edits of config.yaml were checked
            return None

        def check_same_data(self, source, annotations=""):  # a built-in source: no manifest to hash
            return None

        def stages(self):  # nothing recorded done: no flag changes what a stage ran with
            return {}

        def given_teacher_keys(self):  # no loaded teacher's training setting given to train-teacher
            return frozenset()

        def require_stages(self, *a):
            seen["cfg"] = stage_config
            raise _Stop()

        def lock(self):  # stage commands hold the run's lock (issue 24)
            import contextlib

            return contextlib.nullcontext(self)

    monkeypatch.setattr(RunDir, "existing", classmethod(lambda cls, path: FakeRun()))
    args, key, value = FLAGS[param]
    positional = [str(tmp_path)] if command in ("distill", "export") else []
    result = runner.invoke(app, [command, *positional, *args])
    assert isinstance(result.exception, _Stop), result.output
    got, before = _flattened(seen["cfg"]), _flattened(default)
    assert got[key] == value and before[key] != value, (key, got[key])
    # and nothing else changed (but the INT8 format a calibration flag is given with)
    also = {"export.formats"} if "--format" in args and key != "export.formats" else set()
    also |= {"teacher.path"} if "--teacher" in args and key != "teacher.path" else set()
    also |= {"distill.tune_trials"} if "--tune" in args and key != "distill.tune_trials" else set()
    also |= {"distill.method"} if "--method" in args and key != "distill.method" else set()
    also |= {"data.source"} if "--data" in args and key != "data.source" else set()
    assert {k for k in got if got[k] != before[k]} == {key} | also


# ----- INT8 keeps the head in FP32 -----------------------------------------------------------


def test_int8_export_keeps_the_classifier_head_in_fp32_as_its_details_say(tmp_path):
    import onnx

    from distill_export.nets.model_io import new_student, student_meta
    from distill_export.export import ExportOptions, ExportSource, export_formats

    data = synthetic_dataset(n=64)
    cfg = _config()
    student = new_student(cfg, data).eval()
    meta = {**student_meta(cfg, data, "t", {"class_names": data.target_names}), "student": "tiny_cnn"}
    source = ExportSource(student, meta, "0" * 64, tmp_path,
                          calibration=data.train.inputs["image"].numpy())
    result = export_formats(source, ["onnx-int8"], ExportOptions(calibration_samples=64))["onnx-int8"]
    model = onnx.load(result.path)
    producer = {o: n for n in model.graph.node for o in n.output}
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    # Walk back from the graph output to the classifier: the last Gemm/MatMul.
    node = producer[model.graph.output[0].name]
    path = []
    while node.op_type not in ("Gemm", "MatMul"):
        path.append(node.op_type)
        node = producer[node.input[0]]
    head = node
    assert not qdq & set(path), f"the head's output is quantised: {path}"
    feeding = [producer[i].op_type for i in head.input if i in producer]
    assert not qdq & set(feeding), f"Q/DQ feed the head: {feeding}"
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[head.input[1]].data_type == onnx.TensorProto.FLOAT  # FP32 weights
    assert result.details["fp32_nodes"] == [head.name]
    ops = {n.op_type for n in model.graph.node}
    assert qdq <= ops  # ... while the rest is quantised


# ----- the demo's test voices ----------------------------------------------------------------


def test_demo_test_voices_never_occur_in_training_or_validation(monkeypatch):
    from distill_export.config import DataConfig
    from distill_export.data import avdigits, load_dataset
    from distill_export.data.demo_audio import load_demo_audio

    calls = []
    real = avdigits._pair_audio

    def recording(digits, pool, clip_digits, rng):
        clips = real(digits, pool, clip_digits, rng)
        calls.append((np.asarray(digits).copy(), clips))
        return clips

    monkeypatch.setattr(avdigits, "_pair_audio", recording)
    data = load_dataset(DataConfig(), seed=0)
    audio = load_demo_audio()
    voice = np.asarray(audio.voice)
    test_voices = set(np.flatnonzero(np.asarray(audio.test_voices)).tolist())
    assert len(calls) == 3 and test_voices
    split_of = {}
    for digits, clips in calls:
        name = next(n for n in ("val", "test") if np.array_equal(digits, getattr(data, n).labels.numpy())) \
            if len(digits) != len(data.train) else "train"
        split_of[name] = set(voice[clips].tolist())
    assert set(split_of) == {"train", "val", "test"}
    assert not split_of["train"] & test_voices and not split_of["val"] & test_voices
    assert split_of["test"] <= test_voices and len(split_of["test"]) >= 5
    assert set(data.info["test_voices"]) == {audio.voice_names[v] for v in test_voices}


# ----- the distill stage's options each run through training ---------------------------------


def _stage_run(tmp_path, cfg, data):
    """A run directory holding a small trained teacher for `data`, ready for stage_distill."""
    from distill_export.nets.checkpoint import save_checkpoint
    from distill_export.nets.teacher import FusionTeacher
    from distill_export.train_teacher import teacher_kwargs

    run = RunDir.create(tmp_path / "run")
    torch.manual_seed(0)
    kwargs = teacher_kwargs(data, cfg.teacher.width, 0.0)
    teacher = FusionTeacher(**kwargs)
    save_checkpoint(run.file("teacher.pt"), teacher, kind="teacher", arch="fusion_teacher", arch_kwargs=kwargs,
                    meta={"class_names": data.target_names, "dataset": data.name,
                          "input_shapes": {m: list(s.shape) for m, s in data.modalities.items()}})
    return run, teacher.eval()


@pytest.mark.parametrize("view,drop", [("student", ("audio",)), ("full", ())])
def test_teacher_view_decides_what_the_teacher_sees(view, drop, tmp_path):
    from distill_export.pipeline import stage_distill

    data = _data(0.5)
    cfg = _config(epochs=1, teacher_view=view)
    run, teacher = _stage_run(tmp_path, cfg, data)
    stage_distill(cfg, run, True, data, CPU)
    cached = torch.from_numpy(np.load(run.file("teacher_outputs") / "logits.npy"))
    with torch.no_grad():
        want = teacher.forward_features(data.train.inputs, drop=drop)[1]
        other = teacher.forward_features(data.train.inputs, drop=() if drop else ("audio",))[1]
    torch.testing.assert_close(cached, want, rtol=0, atol=1e-6)  # same model, same batch: rounding only
    assert not torch.allclose(cached, other, atol=1e-3)
    report = run.load_report()
    assert len(report["distill"]["student_training"]["history"]) == 1


def test_self_training_control_teacher_sees_the_student_modality_only(tmp_path):
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.pipeline import stage_distill

    data = _data(0.5)
    cfg = _config(epochs=1, self_training_control=True)
    run, _ = _stage_run(tmp_path, cfg, data)
    stage_distill(cfg, run, True, data, CPU)
    control = load_checkpoint(run.file("control_teacher.pt"), kind="teacher")
    assert set(control["arch_kwargs"]["modalities"]) == {"image"}
    report = run.load_report()
    assert set(report["comparisons"]) == {"student_vs_baseline", "self_training_vs_baseline",
                                          "student_vs_self_training"}
    assert len(report["distill"]["self_training_control"]["student_training"]["history"]) == 1


def test_augment_shift_reaches_the_student_and_the_teacher_sees_each_augmented_batch(tmp_path, monkeypatch):
    from distill_export.data import augment
    from distill_export.nets.teacher import FusionTeacher
    from distill_export.pipeline import stage_distill

    shifted, teacher_images = [], []
    real_shift, real_forward = augment.random_shift, FusionTeacher.forward_features

    def recording_shift(x, *a, **k):
        out = real_shift(x, *a, **k)
        shifted.append(out.detach().clone())
        return out

    def recording_forward(self, inputs, drop=()):
        teacher_images.append(inputs["image"].detach().clone())
        return real_forward(self, inputs, drop)

    monkeypatch.setattr(augment, "random_shift", recording_shift)
    monkeypatch.setattr(FusionTeacher, "forward_features", recording_forward)
    data = _data(0.5)
    cfg = _config(epochs=2, batch_size=8, augment="shift")
    run, _ = _stage_run(tmp_path, cfg, data)
    stage_distill(cfg, run, True, data, CPU)
    student_steps = 2 * math.ceil(24 / 8)
    seen_by_teacher = sum(any(torch.equal(s, t) for t in teacher_images if t.shape == s.shape) for s in shifted)
    assert seen_by_teacher == student_steps  # every student batch was augmented and shown to the teacher
    assert len(shifted) == 2 * student_steps  # ... and the baseline got the same augmentation
    assert run.load_report()["distill"]["teacher_cache"]["status"] == "not used"


@pytest.mark.parametrize("form", ["checkpoint", "state_dict"])
def test_student_init_is_where_both_trainings_start(form, tmp_path, steps):
    from distill_export.nets.students import create_student

    data = _data(0.5)
    torch.manual_seed(123)
    init = create_student("tiny_cnn", data.num_outputs)
    path = tmp_path / "init.pt"
    if form == "checkpoint":
        save_student(path, init, _config(), data, "t", {}, {"class_names": data.target_names})
    else:
        torch.save(init.state_dict(), path)
    cfg = _config(epochs=1)
    cfg.student.init_weights = str(path)
    train_student(cfg, data, _teacher_logits(data), None, CPU, quiet=True)
    train_baseline(cfg, data, CPU, quiet=True)
    want = [p.detach() for p in init.parameters()]
    for entry in steps.values():
        assert len(entry["first"]) == len(want)
        for got, w in zip(entry["first"], want):
            assert torch.equal(got, w)


def test_feature_term_trains_the_student_when_beta_is_positive():
    data = _data(0.5)
    feats = torch.randn(len(data.train), 16, generator=torch.Generator().manual_seed(2))
    logits = _teacher_logits(data)
    plain, _ = train_student(_config(epochs=2), data, logits, feats, CPU, quiet=True)
    with_feature, info = train_student(_config(epochs=2, beta=0.5), data, logits, feats, CPU, quiet=True)
    assert {"name": "feature", "weight": 0.5} in info["terms"]
    assert all(h["train_loss_parts"]["feature"] > 0 for h in info["history"])
    diff = [k for k, v in plain.state_dict().items() if not torch.equal(v, with_feature.state_dict()[k])]
    assert diff, "the feature term changed nothing in the student: its gradient does not reach it"


# ----- the objective in training -------------------------------------------------------------


def test_a_terms_weight_reaches_the_training_loss():
    data = _data(0.5)
    logits = _teacher_logits(data)

    def first_loss(kd_weight):
        cfg = _config(epochs=1, terms=[{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": kd_weight}])
        _, info = train_student(cfg, data, logits, None, CPU, quiet=True)
        h = info["history"][0]
        return h["train_loss"], h["train_loss_parts"]

    loss1, parts1 = first_loss(1.0)
    loss3, parts3 = first_loss(3.0)
    # Epoch-mean loss = mean(ce) + w·mean(kd) (the parts are unweighted): each weight shows in it.
    assert loss1 == pytest.approx(parts1["ce"] + 1.0 * parts1["kd"], rel=1e-5)
    assert loss3 == pytest.approx(parts3["ce"] + 3.0 * parts3["kd"], rel=1e-5)


def test_pseudo_label_threshold_is_honoured_in_training():
    """Teacher confidence is 0.787 on every row (logits [2, 0, 0]): a 0.9 threshold keeps no
    pseudo-label, 0.7 keeps them all."""
    data = _data(0.25)
    logits = torch.zeros(len(data.train), 3)
    logits[torch.arange(len(data.train)), torch.arange(len(data.train)) % 3] = 2.0

    def pseudo_parts(threshold):
        cfg = _config(epochs=2, terms=[{"name": "ce", "weight": 1.0},
                                       {"name": "pseudo_label", "weight": 1.0, "threshold": threshold}])
        _, info = train_student(cfg, data, logits, None, CPU, quiet=True)
        assert info["terms"][1]["threshold"] == threshold
        return [h["train_loss_parts"]["pseudo_label"] for h in info["history"]]

    assert pseudo_parts(0.9) == [0.0, 0.0]
    assert all(p > 0.1 for p in pseudo_parts(0.7))


# ----- the verdict is paired -----------------------------------------------------------------


def test_verdict_is_paired_mcnemar_not_two_independent_accuracies():
    """A beats B on 20 of 1000 rows and never loses: 62% vs 60%. Unpaired, that difference is
    noise (two-proportion p ≈ 0.38); paired, all 20 discordant rows go one way (p = 2·0.5^20)."""
    from scipy.stats import binomtest

    from distill_export.tasks.classification.significance import compare

    labels = np.arange(1000) % 10
    pred_b = labels.copy()
    pred_b[:400] = (labels[:400] + 1) % 10  # B right on 600
    pred_a = pred_b.copy()
    pred_a[:20] = labels[:20]  # A right on those 600 and 20 more
    out = compare(pred_a, pred_b, labels)
    assert out["discordant"] == [20, 0] and out["gain"] == pytest.approx(0.02)
    assert out["p_value"] == pytest.approx(binomtest(20, 20, 0.5).pvalue, rel=1e-9)
    assert out["verdict"] == "paid"
