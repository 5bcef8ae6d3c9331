"""The export stage: the student to every configured format, with the parity data validate
judges them by, and the teacher to FP32 ONNX so both are profiled on the same runtimes."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from distill_export.config import RunConfig
from distill_export.errors import ConfigError
from distill_export.distill_runs import teacher_path, timed
from distill_export.files import sha256_file
from distill_export.launch import load_data
from distill_export.pipeline.common import console
from distill_export.rundir import RunDir, records_stage


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

