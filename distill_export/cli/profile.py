"""`distill-export profile TARGET...`: stage 5, latency and throughput on a hardware target."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from distill_export.cli.guard import err, guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import Quiet

app = typer.Typer()

ProfileTargets = Annotated[list[Path], typer.Argument(metavar="TARGET", help="Run directories, .onnx files, TensorRT .engine files or checkpoints (.pt).", show_default=False)]
TargetPreset = Annotated[Optional[str], typer.Option("--target", help="Hardware preset: {targets} (cpu-1t: one thread, like a small ARM core).")]
Threads = Annotated[Optional[str], typer.Option("--threads", help="CPU thread counts to sweep, e.g. 1,2 (0 = all cores; default 1,2,4,all, capped at the core count; a run directory: its profile.threads).")]
Batches = Annotated[Optional[str], typer.Option("--batch", help="Batch sizes to sweep (default 1,8,32,128; a run directory: its profile.batches).")]
Backends = Annotated[Optional[str], typer.Option("--backend", help="Backends by name (default: by --target/--device): {backends}.")]
Device = Annotated[Optional[str], typer.Option("--device", help="{devices}.")]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="Per-sample input shape for files that do not fix it, e.g. 1,28,28.")]
Warmup = Annotated[Optional[float], typer.Option("--warmup", help="Warm-up seconds per model and cell (default 0.2).")]
MinTime = Annotated[Optional[float], typer.Option("--min-time", help="Minimum timed seconds per model and cell (default 0.5).")]
MinIters = Annotated[Optional[int], typer.Option("--min-iters", help="Minimum timed calls per model and cell (default 20).")]
MaxCall = Annotated[Optional[float], typer.Option("--max-call-s", help="Seconds one call of a model may take before it is stopped and refused (default 60; profile.max_call_s).")]
ProfileOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write profile.json, latency.csv and plots here (a lone run directory is updated in place).")]


def _lone_run(targets: list[Path], out_dir: Path | None):
    from distill_export.rundir import RunDir

    if out_dir is None and len(targets) == 1 and Path(targets[0]).is_dir() and (Path(targets[0]) / "config.yaml").exists():
        return RunDir.existing(Path(targets[0]))  # existing: a FIFO or a folder in place of a run file is named
    return None


@app.command(cls=HelpCommand)
@guarded
def profile(
    targets: ProfileTargets, target: TargetPreset = None, threads: Threads = None, batch: Batches = None,
    backend: Backends = None, device: Device = None, input_shape: InputShape = None, warmup: Warmup = None,
    min_time: MinTime = None, min_iters: MinIters = None, max_call_s: MaxCall = None, out_dir: ProfileOut = None,
    quiet: Quiet = False,
):
    """Stage 5: latency and throughput of teacher and student on a hardware target, interleaved in one run."""
    from distill_export.profiling.command import profile_command
    from distill_export.report import print_latency

    run = _lone_run(targets, out_dir)  # profiling one run directory updates it in place
    # with --out too, the run's done stages' files are checked: no other teacher timed (52nd audit F4)
    if run is None and (measured := _lone_run(targets, None)) is not None:
        measured.require_unchanged_artifacts("profile")  # (an unfinished run still profiles to --out)
    with run.lock() if run is not None else contextlib.nullcontext():
        if run is not None:  # what is measured is the current export (a stale one is refused)
            run.require_stages(("distill", "export"), "profile")  # student.pt replaced after distill: refused (B5)
            run.require_unchanged_artifacts("profile")  # the recommendation ranks by parity: of these files
        with run.transaction() if run is not None else contextlib.nullcontext():
            if run is not None:
                run.begin_stage("profile")  # the report rendered before is stale until save() renders it again
            result, written = profile_command(
                targets, preset=target, threads=threads, batches=batch, backends=backend, device=device,
                input_shape=input_shape, warmup_s=warmup, min_time_s=min_time, min_iters=min_iters,
                max_call_s=max_call_s, out=out_dir,
                progress=None if quiet else err.log,
            )
            if run is not None:
                run.mark_stage("profile")
                if not run.missing_stages(None):  # save() rendered the reports from a complete record
                    run.mark_stage("report")
                else:  # e.g. validate stale after a re-export: save() rendered nothing (52nd audit F3)
                    from distill_export.stage_graph import NEXT_COMMAND

                    first = run.missing_stages(None)[0]
                    err.print(f"note: report.md and report.html are not written: stage {first} is not done; next: "
                              + NEXT_COMMAND[first].format(run=run.path), highlight=False, soft_wrap=True, markup=False)
    print_latency({"latency": result.rows, "speedups": result.speedups, "profile": result.meta}, out)
    if written:
        out.print("written: " + ", ".join(str(p) for p in written), highlight=False)
