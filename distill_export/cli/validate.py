"""`distill-export validate RUN`: stage 4, parity of every export; exit 1 if a gate fails."""

from __future__ import annotations

import typer

from distill_export.cli.guard import guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import Gate, Quiet, RunDirArg

app = typer.Typer()


@app.command(cls=HelpCommand)
@guarded
def validate(run_dir: RunDirArg, gate: Gate = None, quiet: Quiet = False):
    """Stage 4: parity of every export against the PyTorch student; exit 1 if a gate fails."""
    from distill_export.config import apply_overrides, validate_config
    from distill_export.config_edits import accept_hand_edits
    from distill_export.errors import ParityError
    from distill_export.launch import open_run
    from distill_export.pipeline import stage_report, stage_validate
    from distill_export.report import print_parity
    from distill_export.validate import check_gates_apply, failed_gates, parse_gate_flags, print_gates

    rd, cfg = open_run(run_dir, None, command="validate")
    from distill_export.tasks import get_task

    gates = parse_gate_flags(gate, get_task(cfg.task))
    check_gates_apply(gates, rd.load_report(), get_task(cfg.task))  # e.g. an INT8 gate without an INT8 export
    apply_overrides(cfg, gates, "--gate")
    validate_config(cfg)  # the gates pass the config's own checks before anything is written
    with rd.lock():
        rd.require_stages(("distill", "export"), "validate")  # a stale export, or student.pt replaced after distill (B5)
        # the teacher too, before any work: recommend (at validate's end) refused it, naming itself (53rd A1)
        rd.require_current_outputs(("train_teacher",), "validate")
        with rd.transaction():
            results = stage_validate(cfg, rd, quiet)  # a failed gate is a result (exit 1 below), not a failure
            if not rd.missing_stages(None):  # a finished run: its report (stale now) shows the new parity
                stage_report(rd)
            accept_hand_edits(rd, rd.load_config().to_dict(), ("validate",))  # it ran with config.yaml's validate.*
    print_parity(rd.load_report(), out)
    print_gates(results, out)
    if failed := failed_gates(results):
        raise ParityError(f"parity gates failed: {'; '.join(failed)}")
