"""The stages after export: validate (parity gates), profile (latency on each target) and report."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from distill_export.config import RunConfig
from distill_export.distill_runs import timed
from distill_export.files import sha256_file
from distill_export.pipeline.common import console
from distill_export.rundir import RunDir, records_stage


@records_stage("validate")
def stage_validate(config: RunConfig, run: RunDir, quiet: bool = False) -> dict:
    from distill_export.tasks import get_task
    from distill_export.validate import PARITY_FILE, failed_gates, load_parity_data, validate_exports

    report = run.load_report()
    exports = {
        fmt: {**art, "path": str(run.file(art["path"]))} for fmt, art in report.get("exports", {}).items()
    }
    parity = load_parity_data(run.file(PARITY_FILE), run)
    task = get_task(config.task)
    teacher_acc = report.get("metrics", {}).get("teacher", {}).get(task.headline)
    # What was validated, by content: profile, report and the recommendation refuse an artifact
    # replaced since (RunDir.require_unchanged_artifacts); `run --resume` validates it again.
    hashes = {fmt: sha256_file(art["path"]) for fmt, art in exports.items() if Path(art["path"]).is_file()}
    with timed(run, "validate"):
        results = validate_exports(exports, parity, config.validate, task, teacher_acc)
    report = run.load_report()
    for fmt, res in results.items():
        res["artifact_sha256"] = hashes.get(fmt)
        report["exports"][fmt]["parity"] = res
    run.update_report(exports=report["exports"])
    teacher_onnx = (report.get("teacher_exports") or {}).get("onnx") or {}
    if teacher_onnx.get("path"):
        # The teacher's ONNX is not shipped: a failed gate is reported, not fatal, and its rows stay.
        from distill_export.validate import (TEACHER_PARITY_FILE, TamperedParity, load_teacher_parity_data,
                                             validate_teacher_onnx)

        from distill_export.errors import DistillExportError

        try:
            teacher_parity = load_teacher_parity_data(run.file(TEACHER_PARITY_FILE), run)
            digest = sha256_file(run.file(teacher_onnx["path"])) if run.file(teacher_onnx["path"]).is_file() else None
            teacher_onnx["parity"] = validate_teacher_onnx(run.file(teacher_onnx["path"]), teacher_parity,
                                                           config.validate, task)
            teacher_onnx["parity"]["artifact_sha256"] = digest
        except TamperedParity:  # changed after export: refused (the stage's files are put back)
            raise
        except DistillExportError as exc:  # e.g. a deleted npz: the student's gates still count
            console.print(Text.assemble(("warning:", "yellow"), f" the teacher's ONNX was not validated: {exc}"), highlight=False)
            teacher_onnx["parity"] = None
        run.update_report(teacher_exports={**report["teacher_exports"], "onnx": teacher_onnx})
        if teacher_onnx["parity"] and not teacher_onnx["parity"]["passed"]:
            console.print(Text.assemble(("warning:", "yellow"), " the teacher's ONNX fails its FP32 parity gates: "
                                        + "; ".join(failed_gates({"teacher onnx": teacher_onnx["parity"]}))), highlight=False)
    if run.load_report().get("latency"):  # profiled before: parity decides what is recommended
        from distill_export.recommend import update_run

        update_run(run, "validate")
    return results

@records_stage("profile")
def stage_profile(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None) -> list[dict]:
    from distill_export.profiling import make_settings, profile_targets

    settings = make_settings(config.profile, device=config.device)
    with timed(run, "profile"):
        result = profile_targets([run.path], settings, None if quiet else console.log)
    run.update_report(latency=result.rows, speedups=result.speedups, profile=result.meta)
    from distill_export.recommend import update_run

    update_run(run, "profile")  # the fastest gate-passing artifact per profiled target
    return result.rows


@records_stage("report")
def stage_report(run: RunDir) -> None:
    from distill_export.report import write_reports

    write_reports(run)

