"""`distill-export distill RUN`: stage 2, the student and the labels-only baseline."""

from __future__ import annotations

import typer

from distill_export.cli.guard import guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import Quiet, RunDirArg, config_flags

app = typer.Typer()


@app.command(cls=HelpCommand)
@guarded
@config_flags("distill")
def distill(run_dir: RunDirArg, overrides: dict = None, quiet: Quiet = False):
    """Stage 2: distill the student and train the labels-only baseline."""
    from distill_export.launch import open_run
    from distill_export.pipeline import stage_distill
    from distill_export.preflight import check_rounds_config

    rd, cfg = open_run(run_dir, overrides, command="distill")
    check_rounds_config(cfg)  # what rounds cannot serve, before the transaction backs anything up
    with rd.lock():  # a second command on this run is refused, not interleaved
        rd.require_stages(("train_teacher",), "distill")
        with rd.transaction():  # a failure leaves the run directory exactly as it was
            stage_distill(cfg, rd, quiet)  # export, validate, profile and report done before: stale now
            rd.save_config(cfg)  # only after success: config.yaml describes the artifacts beside it
    report = rd.load_report()
    from distill_export.tasks import get_task

    task = get_task(cfg.task)  # classification sums up by accuracy, detection by map50 (no 'accuracy' key)
    metrics, name = report["metrics"], task.score_name
    out.print(f"student {name} {100 * metrics['student'][task.headline]:.1f}%, baseline "
              f"{100 * metrics['baseline'][task.headline]:.1f}%, kd_gain {100 * report['kd_gain']:+.1f} points "
              f"({report.get('kd_verdict', '')})")
