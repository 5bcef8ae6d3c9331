"""`distill-export report RUN`: stage 6, the reports from report.json."""

from __future__ import annotations

import typer

from distill_export.cli.guard import err, guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import RunDirArg

app = typer.Typer()


@app.command(cls=HelpCommand)
@guarded
def report(run_dir: RunDirArg):
    """Stage 6: write report.md, report.html and plots from report.json."""
    from distill_export.pipeline import stage_report
    from distill_export.rundir import RunDir

    rd = RunDir.existing(run_dir)
    if not rd.file("report.json").is_file():  # rendering would replace good reports with empty ones
        from distill_export.errors import ConfigError

        raise ConfigError(f"{rd.file('report.json')} is missing: the report is rendered from it, and the stages' "
                          "results went with it; nothing was written (start a new run: `distill-export run --out NEW`)")
    with rd.lock():
        rd.require_stages(None, "report")  # an unfinished or stale run: name the stage to run, write nothing
        rd.require_unchanged_artifacts("report")  # an export replaced after validate: its parity is not its own
        with rd.transaction():
            stage_report(rd)
    out.print(f"report: {rd.file('report.md')}")
    from distill_export.report.outputs import edited_warning

    if warning := edited_warning(rd):  # said in the report too, first
        err.print(f"warning: {warning}", soft_wrap=True)
