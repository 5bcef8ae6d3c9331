"""Every stage in order, with resume: `distill-export run`."""

from __future__ import annotations

import time

from distill_export.config import RunConfig
from distill_export.distill_runs import timed
from distill_export.errors import ParityError
from distill_export.launch import load_data
from distill_export.pipeline.check_stages import stage_profile, stage_report, stage_validate
from distill_export.pipeline.export_stage import stage_export
from distill_export.pipeline.train_stages import stage_distill, stage_train_teacher
from distill_export.rundir import RUN_STAGES, RunDir


def run_all(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None,
            resume: bool = False, before_distill=None) -> dict:
    """Every stage in order; raises ParityError (exit 1) after the report if a gate failed.
    resume: the stages recorded done (the run's first ones) are skipped and their artifacts
    reused; the first unfinished one continues from its training checkpoints; the rest run.
    before_distill(config, run, quiet) -> config: e.g. `run --tune` (tune.tune_before_distill)."""
    from distill_export.preflight import check_config

    check_config(config)  # fail before training, not after
    reused, todo = run.resume_plan() if resume else ([], list(RUN_STAGES))
    for stage in reused:  # killed between recording a stage and deleting its checkpoints
        run.drop_checkpoints(stage)
    if resume:
        # the stages still to run run with config.yaml as it stands: an edit of their sections made
        # before they first ran is what they record (launch.resume_config refused edits of done stages)
        run.record_written_config(config.to_dict())  # 46th audit C1
        run.update_report(resumed=[*run.load_report().get("resumed", []),
                                   {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_stage": todo[0]}])
    else:
        run.save_config(config)
    start = time.perf_counter()
    if data is None and set(todo) & {"train_teacher", "distill", "export"}:
        # launch.start_run loads and checks the data before it makes the run directory
        with timed(run, "data"):
            data, device = load_data(config)
    if "train_teacher" in todo:
        stage_train_teacher(config, run, quiet, data, device)
    if "distill" in todo:
        if before_distill is not None:
            config = before_distill(config, run, quiet)
        stage_distill(config, run, quiet, data, device)
    from distill_export import distributed as ddp

    if not ddp.is_main():  # the training stages hold every collective; rank 0 alone does the rest
        return {}
    if "export" in todo:
        stage_export(config, run, quiet, data, device)
    if "validate" in todo:
        parity = stage_validate(config, run, quiet)
    else:  # validated before the interruption
        parity = {fmt: art["parity"] for fmt, art in run.load_report().get("exports", {}).items() if "parity" in art}
    if "profile" in todo:
        stage_profile(config, run, quiet)
    run.update_report(timings={"total": round(time.perf_counter() - start, 3)})
    stage_report(run)
    failed = [fmt for fmt, res in parity.items() if not res["passed"]]
    if failed:
        raise ParityError(f"parity gates failed for {', '.join(failed)}; see {run.file('report.md')}")
    return run.load_report()
