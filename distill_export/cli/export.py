"""`distill-export export RUN`: stage 3, one file per format."""

from __future__ import annotations

import typer

from distill_export.cli.guard import guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import Quiet, RunDirArg, config_flags

app = typer.Typer()


@app.command(cls=HelpCommand)
@guarded
@config_flags("export")
def export(run_dir: RunDirArg, overrides: dict = None, quiet: Quiet = False):
    """Stage 3: export the student (default: ONNX FP32), one file per format."""
    from distill_export.launch import open_run
    from distill_export.pipeline import stage_export

    rd, cfg = open_run(run_dir, overrides, command="export")
    with rd.lock():
        rd.require_stages(("train_teacher", "distill"), "export")  # the teacher's ONNX: of the file measured
        with rd.transaction():
            stage_export(cfg, rd, quiet)
            rd.save_config(cfg)
    for fmt, art in rd.load_report()["exports"].items():
        out.print(f"{fmt}: {rd.file(art['path'])} ({art['size_bytes'] / 1024:.1f} KiB)")
