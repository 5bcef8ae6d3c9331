"""The stages in order. Each reads and writes the run directory, so each also runs alone.

    data -> train_teacher -> distill -> export -> validate -> profile -> report
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from distill_export.config import RunConfig
from distill_export.errors import ConfigError, ParityError
from distill_export.distill_runs import (
    distill_rounds, draw_examples, labels_only_models, self_training_control, teacher_path, timed,
    training_checkpoint,
)
from distill_export.files import sha256_file
from distill_export.launch import load_data
from distill_export.run_outputs import DISTILL_CHECKPOINTS
from distill_export.rundir import RUN_STAGES, RunDir, records_stage

console = Console(stderr=True, markup=False, emoji=False)  # paths as typed: "[/]" is not markup, ":fire:" no emoji
log = logging.getLogger(__name__)


def task_info(task) -> dict:
    """The record's task section: renderers read the headline metric's name from it."""
    return {"name": task.name, "headline": task.headline, "score_name": task.score_name}


@records_stage("train_teacher")
def stage_train_teacher(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None) -> None:
    from distill_export.train_teacher import train_teacher

    if data is None:
        data, device = load_data(config)
    with timed(run, "train_teacher"):
        if config.teacher.path:
            if not quiet:  # -q: a refusal of this teacher is then the only line
                console.print(f"using teacher {config.teacher.path}", highlight=False, soft_wrap=True)
            training = {"source": str(config.teacher.path)}
        else:
            training = train_teacher(config, data, device, run.file("teacher.pt"), quiet,
                                     checkpoint=training_checkpoint(config, run, "teacher"))
        record_teacher(config, run, data, device, training)


def record_teacher(config: RunConfig, run: RunDir, data, device, training: dict) -> None:
    """The run's teacher measured (test metrics, modality probe, unlabeled pool) into report.json;
    also after `run --tune` swapped in the teacher fusion it chose (tune.py)."""
    from distill_export.nets.model_io import load_teacher
    from distill_export.tasks import get_task
    from distill_export.train_teacher import TeacherSource, evaluate_teacher, unlabeled_pool_score

    path = teacher_path(config, run)
    teacher = load_teacher(path, data, config.teacher.weights,
                           strict=bool(config.teacher.path), max_call_s=config.validate.max_call_s).to(device)
    task = get_task(config.task)
    source = TeacherSource(str(path), trained=not config.teacher.path)  # NaN outputs: refused, never recorded
    metrics = evaluate_teacher(teacher, data, device, task, source=source)
    # The modality gap: what the teacher knows from the student's modality alone.
    others = [m for m in data.modalities if m != config.data.student_modality]
    probe = {
        f"without_{m}": evaluate_teacher(teacher, data, device, task, drop=m, source=source)[task.headline]
        for m in others
    }
    if len(others) > 1:  # with 3+ modalities, also the student's modality alone
        student_only = f"only_{config.data.student_modality}"
        probe[student_only] = evaluate_teacher(teacher, data, device, task, drop=tuple(others),
                                               source=source)[task.headline]
    pool = unlabeled_pool_score(teacher, data, device, task, source)
    run.update_report(
        task=task_info(task),
        dataset={"name": data.name, "class_names": data.target_names, **data.info},
        metrics={"teacher": metrics},
        teacher={"training": training, "modality_probe": probe, "fusion": getattr(teacher, "fusion_name", "external"),
                 "unlabeled_pool": pool,
                 # the file these metrics describe: a stage that reads it again refuses another (run_outputs.py)
                 "file_sha256": sha256_file(path) if path.is_file() else None},
    )


@records_stage("distill")
def stage_distill(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None) -> None:
    from distill_export import distributed as ddp
    from distill_export.capacity import training_fit
    from distill_export.data.dataset import label_fraction_kept
    from distill_export.distill import labels_only, test_outputs, train_baseline
    from distill_export.nets.model_io import save_student
    from distill_export.nets.teacher import teacher_arch
    from distill_export.methods import teacher_needs, term_specs
    from distill_export.tasks import get_task
    from distill_export.nets.model_io import load_teacher

    from distill_export.preflight import check_cache_dir

    check_cache_dir(config.distill.teacher_cache_dir)  # `distill RUN` too, before the data loads
    if data is None:
        data, device = load_data(config)

    teacher_file = teacher_path(config, run)
    if not config.teacher.path:
        run.require("teacher.pt", "train-teacher")
    teacher = load_teacher(teacher_file, data, config.teacher.weights, strict=True,
                           max_call_s=config.validate.max_call_s).to(device)
    modality = config.data.student_modality
    needs = teacher_needs(config.distill)  # what the teacher-output cache stores
    specs = term_specs(config.distill)
    if labels_only(specs):
        models, kd_train, base_train, control, cache_info = labels_only_models(config, run, data, device, specs, quiet)
    else:
        with timed(run, "distill"):
            student, kd_train, targets = distill_rounds(config, run, data, device, teacher, None, needs, quiet,
                                                         "student ", "teacher_outputs")
        with timed(run, "baseline"):
            baseline, base_train = train_baseline(config, data, device, quiet, augment=targets.augment,
                                                  checkpoint=training_checkpoint(config, run, "baseline"))
        cache_info = targets.info
        models = {"student": student, "baseline": baseline}
        control = None
        if config.distill.self_training_control:
            with timed(run, "self_training_control"):
                control, models["self_training"] = self_training_control(config, run, data, device, needs, quiet)
    # The test split, read once, at the end: every comparison below uses these predictions.
    task = get_task(config.task)
    targets = data.test.labels.numpy()
    outputs = {name: test_outputs(m, data, modality, device, name) for name, m in models.items()}
    metrics = {name: task.evaluate(out, targets, data) for name, out in outputs.items()}
    teacher_name = (str(config.teacher.path) if config.teacher.path
                    else f"{teacher_arch(teacher)}({'+'.join(getattr(teacher, 'modality_names', sorted(data.modalities)))})")
    save_student(run.file("baseline.pt"), models["baseline"], config, data, teacher_name,
                 {"student": config.student.name, "role": "baseline"}, task.export_meta(data))
    save_student(run.file("student.pt"), models["student"], config, data, teacher_name,
                 {"student": config.student.name, "role": "kd" if kd_train["distilled"] else "labels_only"}, task.export_meta(data))
    teacher_acc = run.load_report().get("metrics", {}).get("teacher", {}).get(task.headline)
    def compare(a: str, b: str) -> dict:  # paired, on the same test rows
        return task.compare(outputs[a], outputs[b], targets, seed=config.seed)

    figures = draw_examples(config, run, data, device, task, teacher, outputs)
    fit = training_fit(teacher, models, data, modality, device, task, seed=config.seed)
    kd_vs_base = compare("student", "baseline")
    comparisons = {"student_vs_baseline": kd_vs_base}
    if "self_training" in models:
        comparisons["self_training_vs_baseline"] = compare("self_training", "baseline")
        comparisons["student_vs_self_training"] = compare("student", "self_training")
    run.update_report(
        task=task_info(task),
        metrics=metrics,
        kd_gain=kd_vs_base["gain"],  # a fraction, in the task's headline metric
        kd_gain_ci95=kd_vs_base["ci95"],
        kd_gain_p_value=kd_vs_base["p_value"],
        kd_verdict=kd_vs_base["verdict"],
        comparisons=comparisons,
        distill={
            "student": config.student.name,
            # later stages refuse a checkpoint replaced since (ninth audit B5, eleventh B5)
            "files_sha256": {name: sha256_file(run.file(name)) for name in DISTILL_CHECKPOINTS if run.file(name).is_file()},
            "method": "labels_only" if labels_only(specs) else "terms" if config.distill.terms else config.distill.method,
            "distilled": kd_train["distilled"],
            "terms": kd_train["terms"],
            "teacher_needs": sorted(needs),
            # a labels-only objective reads none of them: recorded as not applied (None), never as run
            **{k: (getattr(config.distill, k) if kd_train["distilled"] else None) for k in ("temperature", "alpha", "beta")},
            "label_fraction": config.data.label_fraction,
            "rounds": config.distill.rounds,
            "labeled_train_rows": int(data.train.labeled.sum()),
            "label_fraction_kept": label_fraction_kept(data.train),  # the one-per-class floor can exceed the asked
            "train_rows": len(data.train),
            "kd_loss_impl": config.distill.kd_impl if device.type == "cuda" else "reference",
            "processes": ddp.world(),  # data-parallel ranks (torchrun); 1 without
            "streaming": bool(data.info.get("streaming", False)),
            "student_training": kd_train,
            "baseline_training": base_train,
            "self_training_control": control,
            "teacher_accuracy_retention": (metrics["student"][task.headline] / teacher_acc) if teacher_acc else None,
            "augment": config.distill.augment,
            "mix": config.distill.mix,
            "mix_alpha": config.distill.mix_alpha,
            "teacher_cache": cache_info,
            "fit": fit,
        },
        **({"figures": figures} if figures else {}),
    )


@records_stage("export")
def stage_export(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None) -> None:
    from distill_export.nets.model_io import load_student
    from distill_export.export import ExportOptions, ExportSource, check_formats, export_formats
    from distill_export.tasks import get_task
    from distill_export.train import predict
    from distill_export.validate import PARITY_FILE, save_parity_data

    check_formats(config.export.formats)  # e.g. TensorRT without a GPU: fail before any work
    _check_export_targets(run)  # a folder at RUN/student.onnx: named now, not after the export
    student_path = run.require("student.pt", "distill")
    # a missing or corrupt checkpoint fails before the data loads; a factory arch only if it is the run's student.name
    student, meta = load_student(student_path, factory=config.student.name)
    if data is None:
        data, device = load_data(config)
    modality = config.data.student_modality
    with timed(run, "export"):
        # Reference logits of the PyTorch student on the test split, on CPU in fp32:
        # every exported artifact is judged against these.
        x_test = data.test.inputs[modality]
        _, raw = predict(student.forward_features, x_test, len(data.test))
        task = get_task(config.task)
        checkpoint_sha256 = sha256_file(student_path)
        save_parity_data(run.file(PARITY_FILE), x_test.numpy(), data.test.labels.numpy(), task.decode(raw.numpy()),
                         checkpoint_sha256)
        # The data's calibration split when it has one, else the first training rows (shuffled)
        calibration = data.calibration_rows(modality, config.export.calibration_samples)
        n_cal = len(calibration)
        source = ExportSource(
            model=student, meta=meta, checkpoint_sha256=checkpoint_sha256, out_dir=run.path,
            calibration=calibration.numpy(),
            output_name=task.output_names[0], task_meta=task.export_meta(data),
            tail=task.export_tail(raw.shape[1]), output_names=tuple(task.output_names),
        )
        options = ExportOptions.from_config(config.export, calibration_samples=n_cal)
        results = export_formats(source, config.export.formats, options)
    exports = {}
    for fmt, res in results.items():
        entry = res.to_dict()
        entry["path"] = str(Path(entry["path"]).relative_to(run.path))
        exports[fmt] = entry
    run.update_report(exports=exports)
    with timed(run, "export_teacher"):
        run.update_report(teacher_exports={"onnx": _export_teacher(config, run, data, options)})


# The files the export stage writes into the run (export/*.py, validate's parity files).
EXPORT_OUTPUTS = ("student.onnx", "student-fp16.onnx", "student-int8.onnx", "teacher.onnx", "parity_data.npz",
                  "teacher_parity_data.npz", *(f"student-trt-{p}.engine" for p in ("fp32", "fp16", "int8")))


def _check_export_targets(run: RunDir) -> None:
    """Export writes each file to a temporary name and renames it into place: a folder or a
    symbolic link of the user's at that name (never one the product wrote) made the export run in
    full, then fail naming the temporary file (thirteenth audit B2). Refused before any work."""
    for name in EXPORT_OUTPUTS:
        path = run.file(name)
        if path.is_symlink() or path.is_dir():
            what = "a symbolic link" if path.is_symlink() else "a folder"
            raise ConfigError(f"{path} is {what}, where export writes its {name}; move it away and run export again")


def _export_teacher(config: RunConfig, run: RunDir, data, options) -> dict:
    """The teacher as FP32 ONNX (one input per modality) plus its parity data, so it is profiled
    on the same runtimes as the student. A teacher that will not export is recorded with the
    reason (one warning line) and the run goes on: {"skipped": reason}."""
    from distill_export.errors import DistillExportError
    from distill_export.export.teacher_onnx import export_teacher_onnx
    from distill_export.train import predict
    from distill_export.nets.model_io import load_teacher
    from distill_export.validate import TEACHER_PARITY_FILE, save_teacher_parity_data

    path = teacher_path(config, run)
    try:
        if not config.teacher.path and not path.is_file():
            raise DistillExportError(f"{path} is missing (run `distill-export train-teacher`)")
        teacher = load_teacher(path, data, config.teacher.weights, max_call_s=config.validate.max_call_s).cpu().eval()
        names = [m for m in teacher.modality_names if m in data.test.inputs]
        inputs = {m: data.test.inputs[m] for m in names}
        _, logits = predict(teacher.forward_features, inputs, len(data.test))
        res = export_teacher_onnx(teacher, inputs, run.path, options, str(config.teacher.path or "teacher.pt"))
    except (DistillExportError, RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        console.print(Text.assemble(("warning:", "yellow"), f" the teacher was not exported to ONNX, so it is profiled on "
                                    f"PyTorch only: {reason}"), highlight=False)
        return {"skipped": reason}
    save_teacher_parity_data(run.file(TEACHER_PARITY_FILE), {m: v.numpy() for m, v in inputs.items()},
                             data.test.labels.numpy(), logits.numpy())
    entry = res.to_dict()
    entry["path"] = str(Path(entry["path"]).relative_to(run.path))
    if not config.teacher.path:  # our checkpoint: a teacher.pt replaced later is not this export's (run_outputs.py)
        entry["source_checkpoint_sha256"] = sha256_file(path)
    return entry


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
        from distill_export.validate import TEACHER_PARITY_FILE, load_teacher_parity_data, validate_teacher_onnx

        from distill_export.errors import DistillExportError

        try:
            teacher_parity = load_teacher_parity_data(run.file(TEACHER_PARITY_FILE))
            digest = sha256_file(run.file(teacher_onnx["path"])) if run.file(teacher_onnx["path"]).is_file() else None
            teacher_onnx["parity"] = validate_teacher_onnx(run.file(teacher_onnx["path"]), teacher_parity,
                                                           config.validate, task)
            teacher_onnx["parity"]["artifact_sha256"] = digest
        except DistillExportError as exc:  # e.g. a deleted npz: the student's gates still count
            console.print(Text.assemble(("warning:", "yellow"), f" the teacher's ONNX was not validated: {exc}"), highlight=False)
            teacher_onnx["parity"] = None
        run.update_report(teacher_exports={**report["teacher_exports"], "onnx": teacher_onnx})
        if teacher_onnx["parity"] and not teacher_onnx["parity"]["passed"]:
            console.print(Text.assemble(("warning:", "yellow"), " the teacher's ONNX fails its FP32 parity gates: "
                                        + "; ".join(failed_gates({"teacher onnx": teacher_onnx["parity"]}))), highlight=False)
    if run.load_report().get("latency"):  # profiled before: parity decides what is recommended
        from distill_export.recommend import update_run

        update_run(run)
    return results


@records_stage("profile")
def stage_profile(config: RunConfig, run: RunDir, quiet: bool = False, data=None, device=None) -> list[dict]:
    from distill_export.profiling import make_settings, profile_targets

    settings = make_settings(config.profile, device=config.device)
    with timed(run, "profile"):
        result = profile_targets([run.path], settings, None if quiet else console.log)
    run.update_report(latency=result.rows, speedups=result.speedups, profile=result.meta)
    from distill_export.recommend import update_run

    update_run(run)  # the fastest gate-passing artifact per profiled target
    return result.rows


@records_stage("report")
def stage_report(run: RunDir) -> None:
    from distill_export.report import write_reports

    write_reports(run)


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
