"""The `distill-export` command line: parses options, calls the library, and turns typed
errors into one-line messages and exit codes (2: bad input, 1: a parity gate failed)."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from distill_export.errors import DistillExportError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Distill a multimodal teacher into a small single-modality student, export it, "
    "prove the export computes what the student computes, profile it, and report.",
)
err = Console(stderr=True)
out = Console()

# ----- shared options ---------------------------------------------------------------------
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/<timestamp>).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="Safe-YAML config; flags override it.")]
Recipe = Annotated[Optional[str], typer.Option("--recipe", help="A shipped recipe by name (e.g. avdigits).")]
Student = Annotated[Optional[str], typer.Option("--student", help="Student architecture: tiny_cnn, mobilenet_v3_small, shufflenet_v2_x0_5, resnet18, or package.module:factory.")]
StudentInit = Annotated[Optional[Path], typer.Option("--student-init", help="Initial student weights: our checkpoint, or a local torchvision or timm state_dict (.pt/.pth/.safetensors; timm's resnet18 and mobilenetv3_small_100). A head of another class count is replaced.")]
Teacher = Annotated[Optional[str], typer.Option("--teacher", help="A teacher to use instead of training one: our checkpoint (.pt), a torch.export program (.pt2), or package.module:factory.")]
TeacherWeights = Annotated[Optional[Path], typer.Option("--teacher-weights", help="Weights for a package.module:factory teacher (state_dict .pt or .safetensors).")]
Data = Annotated[Optional[str], typer.Option("--data", help="avdigits (built-in demo) or a manifest .csv/.jsonl: one column per modality, label, optional split.")]
StudentModality = Annotated[Optional[str], typer.Option("--student-modality", help="The modality (manifest column) the student sees, e.g. image.")]
SkipBadRows = Annotated[Optional[bool], typer.Option("--skip-bad-rows", help="Skip manifest rows that fail validation instead of stopping.", show_default=False)]
Augment = Annotated[Optional[str], typer.Option("--augment", help="Student input augmentation: none or shift (the teacher then runs online; no teacher-output cache).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for initialisation, batching and which labels are kept.")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Epochs for the student and the baseline (same budget).")]
Fusion = Annotated[Optional[str], typer.Option("--teacher-fusion", help="How the teacher combines modalities: concat (one MLP over the concatenated embeddings) or late (a product of per-modality experts).")]
TeacherEpochs = Annotated[Optional[int], typer.Option("--teacher-epochs", help="Epochs for the teacher.")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-T", help="KD temperature T > 0.")]
Method = Annotated[Optional[str], typer.Option("--method", help="Distillation method (a preset of terms): hinton, ls_kd, dkd, dist, c2kd, pseudo_label, kd_pseudo_label, labels_only. distill.terms in --config lists terms explicitly.")]
Rounds = Annotated[Optional[int], typer.Option("--rounds", help="Distillation rounds: from round 2 the teacher is the previous student times experts of the other modalities re-fitted on the rows it labeled (co-training).", show_default=False)]
Control = Annotated[Optional[bool], typer.Option("--self-training-control/--no-self-training-control", help="Also distill from an image-only teacher of the same size (what unlabeled rows give without the other modality).", show_default=False)]
Alpha = Annotated[Optional[float], typer.Option("--alpha", help="Weight of the hard-label CE term, in [0, 1].")]
Beta = Annotated[Optional[float], typer.Option("--beta", help="Weight of feature distillation (0 = off).")]
LabelFraction = Annotated[Optional[float], typer.Option("--label-fraction", help="Fraction of training labels kept; the rest are unlabeled rows the student distills on.")]
Formats = Annotated[Optional[str], typer.Option("--format", "--formats", help="Comma-separated export formats: onnx, onnx-fp16, onnx-int8, tensorrt-fp32, tensorrt-fp16, tensorrt-int8.")]
Opset = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset for the export (>= 17).")]
CalibrationSamples = Annotated[Optional[int], typer.Option("--calibration-samples", help="Training rows that calibrate INT8 (default 256).")]
CalibrationMethod = Annotated[Optional[str], typer.Option("--calibration-method", help="INT8 calibration: minmax, entropy or percentile.")]
Gate = Annotated[Optional[list[str]], typer.Option("--gate", help="Override a parity gate, NAME=VALUE (repeatable): fp32_max_abs, fp32_agreement, fp16_agreement, int8_agreement, int8_max_accuracy_drop.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Nproc = Annotated[Optional[int], typer.Option("--nproc", help="Train with N data-parallel processes on this machine (launches torchrun: one per GPU, or up to one per CPU core).")]
Compile = Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the student's training module (CUDA).", show_default=False)]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run in this directory: finished stages are reused, training continues from its last epoch checkpoint. Flags and --config must match the run's config.yaml.")]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory written by an earlier stage.")]


_LONG_QUOTED = re.compile(r"'([^'\n]{%d,})'|\"([^\"\n]{%d,})\"" % (81, 81))
MAX_MESSAGE = 1000


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C, so the same cleanup runs."""


def one_line(message: str) -> str:
    """The message on one line, quoted values cut to 80 characters, the whole to MAX_MESSAGE."""
    text = " ".join(str(message).split())
    text = _LONG_QUOTED.sub(lambda m: (lambda q, v: f"{q}{v[:77]}...{q}")(m.group(0)[0], m.group(1) or m.group(2)), text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _os_error(exc: OSError) -> str:
    """ENOSPC, ENAMETOOLONG, EACCES, ...: what failed and on which file, in one line."""
    import errno

    name = exc.filename if exc.filename is not None else ""
    where = f" ({one_line(repr(str(name)))})" if name != "" else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space or choose another --out"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for the file system{where}"
    return f"{exc.strerror or type(exc).__name__}{where}"


def _fail(message: str, code: int):
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _on_sigterm(signum, frame):
    raise Terminated()


def guarded(fn):
    """Typed errors, OS errors (a full disk, a name too long), MemoryError and JSON/YAML
    decode errors become `error: <one line>` and an exit code; no traceback. SIGTERM is
    handled like Ctrl-C: one line, a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except DistillExportError as exc:
            _fail(str(exc), exc.exit_code)
        except Terminated:
            err.print("terminated (SIGTERM)")
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except MemoryError:
            _fail("out of memory; try a smaller batch size, fewer rows (data.max_train_rows) or a smaller model", 2)
        except json.JSONDecodeError as exc:
            _fail(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", 2)
        except yaml.YAMLError as exc:
            _fail(f"invalid YAML: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", 2)
        except OSError as exc:
            _fail(_os_error(exc), 2)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _overrides(**flags) -> dict:
    """Map CLI flags onto dotted config keys; None means 'not given'."""
    keys = {
        "out": "out", "student": "student.name", "student_init": "student.init_weights",
        "teacher": "teacher.path", "device": "device", "seed": "seed", "epochs": "distill.epochs",
        "teacher_epochs": "teacher.epochs", "temperature": "distill.temperature",
        "alpha": "distill.alpha", "beta": "distill.beta", "label_fraction": "data.label_fraction",
        "formats": "export.formats", "opset": "export.opset", "calibration_samples": "export.calibration_samples",
        "calibration_method": "export.calibration_method", "data": "data.source", "student_modality": "data.student_modality",
        "skip_bad_rows": "data.skip_bad_rows", "teacher_weights": "teacher.weights", "augment": "distill.augment",
        "method": "distill.method", "self_training_control": "distill.self_training_control",
        "compile": "distill.compile", "teacher_fusion": "teacher.fusion", "rounds": "distill.rounds",
    }
    return {keys[k]: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}


def _load(recipe, config, **flags):
    from distill_export.config import load_config

    return load_config(recipe or "avdigits", config, _overrides(**flags))


def _existing(run_dir: Path, **flags):
    from distill_export.config import apply_overrides, validate_config
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_dir)
    config = run.load_config()
    apply_overrides(config, _overrides(**flags), "flags")
    validate_config(config)
    return run, config


def _differences(saved, wanted, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (`out` is where, not what)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = [k for k in dict.fromkeys([*saved, *wanted]) if not (prefix == "" and k == "out")]
        return [d for k in keys for d in _differences(saved.get(k), wanted.get(k), f"{prefix}{k}.")]
    if saved == wanted or (isinstance(saved, (list, tuple)) and isinstance(wanted, (list, tuple))
                           and list(saved) == list(wanted)):
        return []
    return [prefix[:-1]]


def _resume_config(run_dir: Path, recipe, config_file, flags: dict):
    """The run to resume and its config; flags or --config that change it are refused, naming the keys."""
    from distill_export.config import _show, apply_overrides, config_from_dict, load_config, validate_config
    from distill_export.rundir import RunDir

    if flags.get("out") is not None:
        raise DistillExportError("--resume continues the run in its own directory; drop --out")
    rd = RunDir.resumable(run_dir)
    saved = rd.load_config()
    overrides = _overrides(**flags)
    if recipe or config_file:  # a whole config: compare all of it
        wanted = load_config(recipe or "avdigits", config_file, overrides)
    else:  # flags only: they must agree with the run's values
        wanted = apply_overrides(config_from_dict(saved.to_dict()), overrides, "flags")
        validate_config(wanted)
    a, b = saved.to_dict(), wanted.to_dict()
    diff = _differences(a, b)
    if diff:
        def value(d, key):
            for part in key.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            return _show(d, 40)

        shown = "; ".join(f"{k}: run {value(a, k)}, given {value(b, k)}" for k in diff[:6])
        more = f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise DistillExportError(f"--resume {run_dir}: the config differs from the run's config.yaml in "
                                 f"{len(diff)} key{'s' * (len(diff) > 1)} ({shown}{more}); resume without "
                                 "them, or start a new run with `--out NEW`")
    return rd, saved


@app.command()
@guarded
def run(
    out_dir: Out = None, config: ConfigFile = None, recipe: Recipe = None, student: Student = None,
    student_init: StudentInit = None, teacher: Teacher = None, device: Device = None, seed: Seed = None,
    epochs: Epochs = None, teacher_epochs: TeacherEpochs = None, temperature: Temperature = None,
    alpha: Alpha = None, beta: Beta = None, label_fraction: LabelFraction = None,
    formats: Formats = None, data: Data = None, student_modality: StudentModality = None,
    skip_bad_rows: SkipBadRows = None, teacher_weights: TeacherWeights = None, augment: Augment = None,
    method: Method = None, self_training_control: Control = None, teacher_fusion: Fusion = None,
    rounds: Rounds = None, quiet: Quiet = False, resume: Resume = None, nproc: Nproc = None,
    compile: Compile = None,
):
    """Every stage in one command: train the teacher, distill, export, validate, profile, report.

    With no arguments it runs the built-in AV-Digits demo on the CPU, offline. `--resume RUN`
    continues an interrupted run (SIGKILL, SIGTERM, Ctrl-C) where it stopped.
    """
    from distill_export.errors import ParityError
    from distill_export.pipeline import run_all
    from distill_export.report import print_summary
    from distill_export.rundir import RunDir

    flags = dict(out=out_dir, student=student, student_init=student_init, teacher=teacher,
                 device=device, seed=seed, epochs=epochs, teacher_epochs=teacher_epochs,
                 temperature=temperature, alpha=alpha, beta=beta, label_fraction=label_fraction,
                 formats=formats, data=data, student_modality=student_modality, skip_bad_rows=skip_bad_rows,
                 teacher_weights=teacher_weights, augment=augment, method=method,
                 self_training_control=self_training_control, teacher_fusion=teacher_fusion, compile=compile,
                 rounds=rounds)
    from distill_export import distributed as ddp

    if nproc is not None and not ddp.launched_by_torchrun():
        if resume is not None:
            raise DistillExportError("--resume runs in one process: drop --nproc")
        cfg = _load(recipe, config, **flags)
        ddp.check_nproc(nproc, cfg.device)
        argv = sys.argv[1:]
        at = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
        argv = argv[:at] + argv[at + (1 if "=" in argv[at] else 2):]  # torchrun's children run without it
        code = ddp.launch_torchrun(nproc, argv)
        if code:
            raise typer.Exit(code)
        return
    if ddp.launched_by_torchrun():
        ddp.enter_run_command()
        try:
            _run_rank(recipe, config, flags, quiet, resume)
        finally:
            ddp.shutdown()
        ddp.exit_after_success()
    if resume is not None:
        rd, cfg = _resume_config(resume, recipe, config, flags)
        with rd.lock():  # a run still going in that directory is not resumed under its feet
            err.print(rd.resume_summary(), highlight=False, soft_wrap=True, markup=False)
            try:
                report = run_all(cfg, rd, quiet, resume=True)
            except ParityError:
                print_summary(rd.load_report(), out)
                raise
        print_summary(report, out)
        out.print(f"report: {rd.file('report.md')}  ({rd.file('report.html')})")
        return
    cfg = _load(recipe, config, **flags)
    from distill_export.pipeline import preflight

    preflight(cfg)
    from distill_export.pipeline import _setup
    from distill_export.rundir import RUN_STAGES, check_free

    check_free(cfg.out)  # a folder of the user's files or a run: refused before the data loads
    started = time.perf_counter()
    dataset, dev = _setup(cfg)  # the data, student and teacher are checked before any directory is made
    loaded_s = round(time.perf_counter() - started, 3)
    rd = RunDir.create(cfg.out, fresh=True, stages=RUN_STAGES)  # an atomic claim: one run per folder
    rd.update_report(timings={"data": loaded_s})
    err.print(f"run directory: {rd.path}")
    try:
        with rd.lock():  # held while the run works: `run --resume` of it meanwhile is refused
            report = run_all(cfg, rd, quiet, data=dataset, device=dev)
    except ParityError:
        print_summary(rd.load_report(), out)
        raise
    print_summary(report, out)
    out.print(f"report: {rd.file('report.md')}  ({rd.file('report.html')})")


def _run_rank(recipe, config_file, flags: dict, quiet: bool, resume) -> None:
    """One process of `torchrun -m distill_export run ...`: rank 0 is the run (its directory, its
    report, export/validate/profile); the other ranks train their shards beside it in a scratch
    directory that is deleted afterwards (every collective is inside the training stages)."""
    import os
    import shutil
    import tempfile

    from distill_export import distributed as ddp
    from distill_export.pipeline import _setup, preflight, run_all
    from distill_export.report import print_summary
    from distill_export.rundir import RUN_STAGES, RunDir, check_free

    if resume is not None:
        raise DistillExportError("--resume runs in one process: resume without torchrun/--nproc")
    cfg = _load(recipe, config_file, **flags)
    preflight(cfg)
    main = int(os.environ["RANK"]) == 0
    scratch = None if main else tempfile.mkdtemp(prefix=f"distill-export-rank{os.environ['RANK']}-")
    if main:
        check_free(cfg.out)
    else:
        cfg.out = str(Path(scratch) / "run")
    try:
        dataset, dev = _setup(cfg)  # joins the process group (distributed.init_from_env)
        rd = RunDir.create(cfg.out, fresh=True, stages=RUN_STAGES)
        if main:
            err.print(f"run directory: {rd.path} ({ddp.world()} processes, {ddp.backend_for(dev.type)})")
        with rd.lock():
            report = run_all(cfg, rd, quiet or not main, data=dataset, device=dev)
        if main:
            print_summary(report, out)
            out.print(f"report: {rd.file('report.md')}  ({rd.file('report.html')})")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@app.command("train-teacher")
@guarded
def train_teacher_cmd(
    out_dir: Out = None, config: ConfigFile = None, recipe: Recipe = None, teacher: Teacher = None,
    device: Device = None, seed: Seed = None, teacher_epochs: TeacherEpochs = None,
    label_fraction: LabelFraction = None, data: Data = None, student_modality: StudentModality = None,
    skip_bad_rows: SkipBadRows = None, teacher_weights: TeacherWeights = None, teacher_fusion: Fusion = None,
    quiet: Quiet = False,
):
    """Stage 1: train the multimodal teacher (or evaluate --teacher) into a new run directory."""
    from distill_export.pipeline import stage_train_teacher
    from distill_export.rundir import RunDir

    cfg = _load(recipe, config, out=out_dir, teacher=teacher, device=device, seed=seed,
                teacher_epochs=teacher_epochs, label_fraction=label_fraction, data=data,
                student_modality=student_modality, skip_bad_rows=skip_bad_rows, teacher_weights=teacher_weights,
                teacher_fusion=teacher_fusion)
    from distill_export.pipeline import preflight

    preflight(cfg)
    from distill_export.pipeline import _setup
    from distill_export.rundir import check_free

    check_free(cfg.out)
    dataset, dev = _setup(cfg)  # checked before any directory is made
    rd = RunDir.create(cfg.out, fresh=True, stages=("train_teacher",))
    try:
        stage_train_teacher(cfg, rd, quiet, dataset, dev)
        rd.save_config(cfg)  # written by the stage that succeeded, with the settings it used
    except Exception:
        rd.discard()  # this command made the folder and finished nothing in it
        raise
    out.print(f"teacher written to {rd.path}")


@app.command()
@guarded
def distill(
    run_dir: RunDirArg, student: Student = None, student_init: StudentInit = None, epochs: Epochs = None,
    temperature: Temperature = None, alpha: Alpha = None, beta: Beta = None, seed: Seed = None,
    device: Device = None, augment: Augment = None, method: Method = None,
    self_training_control: Control = None, rounds: Rounds = None, quiet: Quiet = False,
):
    """Stage 2: distill the student and train the labels-only baseline."""
    from distill_export.pipeline import stage_distill

    rd, cfg = _existing(run_dir, student=student, student_init=student_init, epochs=epochs,
                        temperature=temperature, alpha=alpha, beta=beta, seed=seed, device=device,
                        augment=augment, method=method, self_training_control=self_training_control,
                        rounds=rounds)
    rd.require_stages(("train_teacher",), "distill")
    with rd.transaction():  # a failure leaves the run directory exactly as it was
        stage_distill(cfg, rd, quiet)
        rd.save_config(cfg)  # only after success: config.yaml describes the artifacts beside it
    report = rd.load_report()
    out.print(f"student {100 * report['metrics']['student']['accuracy']:.1f}%, baseline "
              f"{100 * report['metrics']['baseline']['accuracy']:.1f}%, kd_gain {100 * report['kd_gain']:+.1f} points "
              f"({report.get('kd_verdict', '')})")


Trials = Annotated[int, typer.Option("--trials", help="Trials to run (budget).")]
Minutes = Annotated[Optional[float], typer.Option("--minutes", help="Stop after this many minutes (budget).")]
TuneMethods = Annotated[Optional[str], typer.Option("--methods", help="Comma-separated presets to search (default: every preset that uses the teacher).")]
TuneOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the best config (default RUN/tuned.yaml).")]


ConfirmTop = Annotated[int, typer.Option("--confirm-top", help="Completed trials to re-train with fresh seeds after the search (best first).")]
ConfirmSeeds = Annotated[int, typer.Option("--confirm-seeds", help="Fresh training seeds for each confirmed trial and the labels-only baseline; the objective is chosen by its mean. 0: off (the best trial's own score decides).")]


@app.command()
@guarded
def tune(run_dir: RunDirArg, trials: Trials = 30, minutes: Minutes = None, methods: TuneMethods = None,
         out_file: TuneOut = None, confirm_top: ConfirmTop = 3, confirm_seeds: ConfirmSeeds = 3, quiet: Quiet = False):
    """Search the distillation method, weights, T and thresholds on the validation split (Optuna),
    then re-train the top trials and the labels-only baseline with fresh seeds and choose by the mean.

    Writes the choice as YAML for `distill-export run --config` (labels only where no objective is
    confirmed above the baseline); the test split is not read.
    """
    from distill_export.confirm import ConfirmSpec
    from distill_export.tune import TuneBudget, tune as run_tune

    budget = TuneBudget(trials, minutes)
    budget.check()  # a bad budget fails before the data loads
    confirm_spec = ConfirmSpec(confirm_top, confirm_seeds)
    confirm_spec.check()
    rd, cfg = _existing(run_dir)
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    path = out_file or rd.file("tuned.yaml")
    summary = run_tune(cfg, rd, names, budget, Path(path), quiet, confirm_spec)
    best = summary["best"]
    out.print(f"best of {summary['completed']} trials ({summary['pruned']} pruned, {summary['seconds']:.0f} s): "
              f"{best['method']}, validation accuracy {100 * best['val_accuracy']:.1f}%")
    if summary["confirmation"] is not None:
        out.print(f"confirmation ({summary['confirm_seconds']:.0f} s): {summary['decision']['line']}", highlight=False)
    else:
        out.print(summary["decision"]["line"], highlight=False)
    out.print(f"config: {path}  (use: distill-export run --config {path})", highlight=False)


@app.command()
@guarded
def export(run_dir: RunDirArg, formats: Formats = None, opset: Opset = None,
           calibration_samples: CalibrationSamples = None, calibration_method: CalibrationMethod = None,
           quiet: Quiet = False):
    """Stage 3: export the student (default: ONNX FP32), one file per format."""
    from distill_export.pipeline import stage_export

    rd, cfg = _existing(run_dir, formats=formats, opset=opset, calibration_samples=calibration_samples,
                        calibration_method=calibration_method)
    rd.require_stages(("distill",), "export")
    with rd.transaction():
        stage_export(cfg, rd, quiet)
        rd.save_config(cfg)
    for fmt, art in rd.load_report()["exports"].items():
        out.print(f"{fmt}: {rd.file(art['path'])} ({art['size_bytes'] / 1024:.1f} KiB)")


@app.command()
@guarded
def validate(run_dir: RunDirArg, gate: Gate = None, quiet: Quiet = False):
    """Stage 4: parity of every export against the PyTorch student; exit 1 if a gate fails."""
    from distill_export.config import apply_overrides
    from distill_export.errors import ParityError
    from distill_export.pipeline import stage_validate
    from distill_export.report import print_parity
    from distill_export.validate import failed_gates, parse_gate_flags, print_gates

    rd, cfg = _existing(run_dir)
    from distill_export.tasks import get_task

    apply_overrides(cfg, parse_gate_flags(gate, get_task(cfg.task)), "--gate")
    rd.require_stages(("export",), "validate")
    with rd.transaction():
        results = stage_validate(cfg, rd, quiet)  # a failed gate is a result (exit 1 below), not a failure
    print_parity(rd.load_report(), out)
    print_gates(results, out)
    if failed := failed_gates(results):
        raise ParityError(f"parity gates failed: {'; '.join(failed)}")


ProfileTargets = Annotated[list[Path], typer.Argument(metavar="TARGET", help="Run directories, .onnx files, TensorRT .engine files or checkpoints (.pt).", show_default=False)]
TargetPreset = Annotated[Optional[str], typer.Option("--target", help="Hardware preset: cpu-1t (one thread, like a small ARM core), cpu-4t, gpu.")]
Threads = Annotated[Optional[str], typer.Option("--threads", help="CPU thread counts to sweep, e.g. 1,2 (0 = all cores; default 1,2,4,all, capped at the core count).")]
Batches = Annotated[Optional[str], typer.Option("--batch", help="Batch sizes to sweep (default 1,8,32,128).")]
Backends = Annotated[Optional[str], typer.Option("--backend", help="Backends by name (default: by --target/--device): torch-cpu, torch-cpu-cl, torch-cpu-compile, torch-cuda, torch-cuda-fp16, torch-cuda-fp16-cl, torch-cuda-compile, torch-cuda-graphs, ort-cpu, ort-cuda, ort-trt, tensorrt.")]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="Per-sample input shape for files that do not fix it, e.g. 1,28,28.")]
Warmup = Annotated[Optional[float], typer.Option("--warmup", help="Warm-up seconds per model and cell (default 0.2).")]
MinTime = Annotated[Optional[float], typer.Option("--min-time", help="Minimum timed seconds per model and cell (default 0.5).")]
MinIters = Annotated[Optional[int], typer.Option("--min-iters", help="Minimum timed calls per model and cell (default 20).")]
ProfileOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write profile.json, latency.csv and plots here (a lone run directory is updated in place).")]


def _lone_run(targets: list[Path], out_dir: Path | None):
    from distill_export.rundir import RunDir

    if out_dir is None and len(targets) == 1 and Path(targets[0]).is_dir() and (Path(targets[0]) / "config.yaml").is_file():
        return RunDir(Path(targets[0]))
    return None


@app.command()
@guarded
def profile(
    targets: ProfileTargets, target: TargetPreset = None, threads: Threads = None, batch: Batches = None,
    backend: Backends = None, device: Device = None, input_shape: InputShape = None, warmup: Warmup = None,
    min_time: MinTime = None, min_iters: MinIters = None, out_dir: ProfileOut = None, quiet: Quiet = False,
):
    """Stage 5: latency and throughput of teacher and student on a hardware target, interleaved in one run."""
    from distill_export.profiling.command import profile_command
    from distill_export.report import print_latency

    run = _lone_run(targets, out_dir)  # profiling one run directory updates it in place
    with run.transaction() if run is not None else contextlib.nullcontext():
        result, written = profile_command(
            targets, preset=target, threads=threads, batches=batch, backends=backend, device=device,
            input_shape=input_shape, warmup_s=warmup, min_time_s=min_time, min_iters=min_iters, out=out_dir,
            progress=None if quiet else err.log,
        )
        if run is not None:
            run.mark_stage("profile")
    print_latency({"latency": result.rows, "speedups": result.speedups, "profile": result.meta}, out)
    if written:
        out.print("written: " + ", ".join(str(p) for p in written), highlight=False)


@app.command()
@guarded
def report(run_dir: RunDirArg):
    """Stage 6: write report.md, report.html and plots from report.json."""
    from distill_export.pipeline import stage_report
    from distill_export.rundir import RunDir

    rd = RunDir.existing(run_dir)
    rd.require_stages(None, "report")  # an unfinished run: name the missing stages, write nothing
    with rd.transaction():
        stage_report(rd)
    out.print(f"report: {rd.file('report.md')}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
