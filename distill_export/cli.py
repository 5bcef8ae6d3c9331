"""The `distill-export` command line: parses options, calls the library, and turns typed
errors into one-line messages and exit codes (2: bad input, 1: a parity gate failed)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

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
Student = Annotated[Optional[str], typer.Option("--student", help="Student architecture: tiny_cnn, mobilenet_v3_small, shufflenet_v2_x0_5, resnet18.")]
StudentInit = Annotated[Optional[Path], typer.Option("--student-init", help="Initial student weights (a checkpoint or a state_dict file).")]
Teacher = Annotated[Optional[Path], typer.Option("--teacher", help="A teacher checkpoint to use instead of training one.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for initialisation, batching and which labels are kept.")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Epochs for the student and the baseline (same budget).")]
TeacherEpochs = Annotated[Optional[int], typer.Option("--teacher-epochs", help="Epochs for the teacher.")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-T", help="KD temperature T > 0.")]
Alpha = Annotated[Optional[float], typer.Option("--alpha", help="Weight of the hard-label CE term, in [0, 1].")]
Beta = Annotated[Optional[float], typer.Option("--beta", help="Weight of feature distillation (0 = off).")]
LabelFraction = Annotated[Optional[float], typer.Option("--label-fraction", help="Fraction of training labels kept; the rest are unlabeled rows the student distills on.")]
Formats = Annotated[Optional[str], typer.Option("--format", "--formats", help="Comma-separated export formats, e.g. onnx,onnx-fp16,onnx-int8.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory written by an earlier stage.")]


def guarded(fn):
    """Typed errors become `error: <one line>` and an exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DistillExportError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _overrides(**flags) -> dict:
    """Map CLI flags onto dotted config keys; None means 'not given'."""
    keys = {
        "out": "out", "student": "student.name", "student_init": "student.init_weights",
        "teacher": "teacher.path", "device": "device", "seed": "seed", "epochs": "distill.epochs",
        "teacher_epochs": "teacher.epochs", "temperature": "distill.temperature",
        "alpha": "distill.alpha", "beta": "distill.beta", "label_fraction": "data.label_fraction",
        "formats": "export.formats",
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


@app.command()
@guarded
def run(
    out_dir: Out = None, config: ConfigFile = None, recipe: Recipe = None, student: Student = None,
    student_init: StudentInit = None, teacher: Teacher = None, device: Device = None, seed: Seed = None,
    epochs: Epochs = None, teacher_epochs: TeacherEpochs = None, temperature: Temperature = None,
    alpha: Alpha = None, beta: Beta = None, label_fraction: LabelFraction = None,
    formats: Formats = None, quiet: Quiet = False,
):
    """Every stage in one command: train the teacher, distill, export, validate, profile, report.

    With no arguments it runs the built-in AV-Digits demo on the CPU, offline.
    """
    from distill_export.errors import ParityError
    from distill_export.pipeline import run_all
    from distill_export.report import print_summary
    from distill_export.rundir import RunDir

    cfg = _load(recipe, config, out=out_dir, student=student, student_init=student_init, teacher=teacher,
                device=device, seed=seed, epochs=epochs, teacher_epochs=teacher_epochs,
                temperature=temperature, alpha=alpha, beta=beta, label_fraction=label_fraction,
                formats=formats)
    rd = RunDir.create(cfg.out)
    err.print(f"run directory: {rd.path}")
    try:
        report = run_all(cfg, rd, quiet)
    except ParityError:
        print_summary(rd.load_report(), out)
        raise
    print_summary(report, out)
    out.print(f"report: {rd.file('report.md')}  ({rd.file('report.html')})")


@app.command("train-teacher")
@guarded
def train_teacher_cmd(
    out_dir: Out = None, config: ConfigFile = None, recipe: Recipe = None, teacher: Teacher = None,
    device: Device = None, seed: Seed = None, teacher_epochs: TeacherEpochs = None,
    label_fraction: LabelFraction = None, quiet: Quiet = False,
):
    """Stage 1: train the multimodal teacher (or evaluate --teacher) into a new run directory."""
    from distill_export.pipeline import stage_train_teacher
    from distill_export.rundir import RunDir

    cfg = _load(recipe, config, out=out_dir, teacher=teacher, device=device, seed=seed,
                teacher_epochs=teacher_epochs, label_fraction=label_fraction)
    rd = RunDir.create(cfg.out)
    rd.save_config(cfg)
    stage_train_teacher(cfg, rd, quiet)
    out.print(f"teacher written to {rd.path}")


@app.command()
@guarded
def distill(
    run_dir: RunDirArg, student: Student = None, student_init: StudentInit = None, epochs: Epochs = None,
    temperature: Temperature = None, alpha: Alpha = None, beta: Beta = None, seed: Seed = None,
    device: Device = None, quiet: Quiet = False,
):
    """Stage 2: distill the student and train the labels-only baseline."""
    from distill_export.pipeline import stage_distill

    rd, cfg = _existing(run_dir, student=student, student_init=student_init, epochs=epochs,
                        temperature=temperature, alpha=alpha, beta=beta, seed=seed, device=device)
    rd.save_config(cfg)
    stage_distill(cfg, rd, quiet)
    report = rd.load_report()
    out.print(f"student {100 * report['metrics']['student']['accuracy']:.1f}%, baseline "
              f"{100 * report['metrics']['baseline']['accuracy']:.1f}%, kd_gain {100 * report['kd_gain']:+.1f} points")


@app.command()
@guarded
def export(run_dir: RunDirArg, formats: Formats = None, quiet: Quiet = False):
    """Stage 3: export the student (default: ONNX FP32)."""
    from distill_export.pipeline import stage_export

    rd, cfg = _existing(run_dir, formats=formats)
    rd.save_config(cfg)
    stage_export(cfg, rd, quiet)
    for fmt, art in rd.load_report()["exports"].items():
        out.print(f"{fmt}: {rd.file(art['path'])} ({art['size_bytes'] / 1024:.1f} KiB)")


@app.command()
@guarded
def validate(run_dir: RunDirArg, quiet: Quiet = False):
    """Stage 4: parity of every export against the PyTorch student; exit 1 if a gate fails."""
    from distill_export.errors import ParityError
    from distill_export.pipeline import stage_validate
    from distill_export.report import print_parity

    rd, cfg = _existing(run_dir)
    results = stage_validate(cfg, rd, quiet)
    print_parity(rd.load_report(), out)
    failed = [fmt for fmt, r in results.items() if not r["passed"]]
    if failed:
        raise ParityError(f"parity gates failed for {', '.join(failed)}")


@app.command()
@guarded
def profile(run_dir: RunDirArg, quiet: Quiet = False):
    """Stage 5: latency and throughput of teacher and student, interleaved in one run."""
    from distill_export.pipeline import stage_profile
    from distill_export.report import print_latency

    rd, cfg = _existing(run_dir)
    stage_profile(cfg, rd, quiet)
    print_latency(rd.load_report(), out)


@app.command()
@guarded
def report(run_dir: RunDirArg):
    """Stage 6: write report.md, report.html and plots from report.json."""
    from distill_export.pipeline import stage_report
    from distill_export.rundir import RunDir

    rd = RunDir.existing(run_dir)
    stage_report(rd)
    out.print(f"report: {rd.file('report.md')}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
