"""`distill-export run`: every stage in one command (also under torchrun, and --resume)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer

from distill_export.cli.guard import err, guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import ConfigFile, Nproc, Quiet, Recipe, Resume, config_flags, load
from distill_export.errors import DistillExportError

app = typer.Typer()


@app.command(cls=HelpCommand)
@guarded
@config_flags("run")
def run(config: ConfigFile = None, recipe: Recipe = None, overrides: dict = None, quiet: Quiet = False,
        resume: Resume = None, nproc: Nproc = None):
    """Every stage in one command: train the teacher, distill, export, validate, profile, report.

    With no arguments it runs the built-in AV-Digits demo on the CPU, offline. `--resume RUN`
    continues an interrupted run (SIGKILL, SIGTERM, Ctrl-C) where it stopped.
    """
    from distill_export import distributed as ddp
    from distill_export import launch
    from distill_export.pipeline import run_all
    from distill_export.tune import tune_before_distill

    if nproc is not None and not ddp.launched_by_torchrun():
        if resume is not None:
            raise DistillExportError("--resume runs in one process: drop --nproc")
        cfg = load(recipe, config, overrides)
        if cfg.distill.tune_trials or cfg.distill.tune_minutes:
            raise DistillExportError("--tune searches in one process: run `distill-export tune` first, then "
                                     "`run --nproc N --config tuned.yaml`")
        # the config, --out and the data are checked here first; a rank's error comes back as one line
        launch.relaunch_under_torchrun(nproc, cfg, sys.argv[1:])
        return
    if ddp.launched_by_torchrun():
        if resume is not None:
            raise DistillExportError("--resume runs in one process: resume without torchrun/--nproc")
        cfg = load(recipe, config, overrides)
        try:
            with launch.torchrun_rank(cfg) as (rd, data, device, main):
                if main:
                    err.print(f"run directory: {rd.path} ({ddp.world()} processes, {ddp.backend_for(device.type)})")
                with _discarded_if_refused(rd), rd.lock():
                    report = run_all(cfg, rd, quiet or not main, data=data, device=device)
                if main:
                    _print_report(rd, report)
        except Exception as exc:
            from distill_export import rank_errors

            # A collective whose peer rank died is that rank's failure, which the launcher reports
            if isinstance(exc, DistillExportError) or not rank_errors.another_rank_failed(wait_s=10.0):
                raise
            raise typer.Exit(1) from None
        ddp.exit_after_success()
    if resume is not None:
        rd, cfg = launch.resume_config(resume, recipe, config, overrides)
        with rd.lock():  # a run still going in that directory is not resumed under its feet
            rd.stale_if_outdated()  # a stage's file gone or changed by hand: that stage and what follows run again
            # before any work, and honest: a checkpoint of other settings restarts, and says so
            tunes = bool(cfg.distill.tune_trials or cfg.distill.tune_minutes)
            err.print(rd.resume_summary(launch.resume_restarts(rd, cfg), tunes), highlight=False, soft_wrap=True,
                      markup=False)
            _summarised(rd, lambda: run_all(cfg, rd, quiet, resume=True, before_distill=tune_before_distill))
        return
    cfg = load(recipe, config, overrides)
    rd, data, device = launch.start_run(cfg)  # the config, folder and data are checked before it is made
    err.print(f"run directory: {rd.path}")
    with _discarded_if_refused(rd), rd.lock():  # the lock: `run --resume` of it meanwhile is refused
        _summarised(rd, lambda: run_all(cfg, rd, quiet, data=data, device=device, before_distill=tune_before_distill))


@contextmanager
def _discarded_if_refused(rd):
    """A refusal (one-line error) before any stage finished removes the run folder this command
    made (sixth audit W3: a teacher refused for non-finite outputs left config.yaml, state.json
    and report.json that blocked --out next time, under a line saying nothing was recorded), as
    train-teacher does. An interrupt or a crash keeps it: that is what --resume continues."""
    try:
        yield
    except DistillExportError:
        rd.discard()  # only if no stage is done: a finished stage is the user's to resume from
        raise


def _summarised(rd, stages) -> None:
    """Run the stages; print the summary, also when a parity gate failed (then exit 1)."""
    from distill_export.errors import ParityError
    from distill_export.report import print_summary

    try:
        report = stages()
    except ParityError:
        print_summary(rd.load_report(), out)
        raise
    _print_report(rd, report)


def _print_report(rd, report: dict) -> None:
    from distill_export.report import print_summary

    print_summary(report, out)
    out.print(f"report: {rd.file('report.md')}  ({rd.file('report.html')})")
