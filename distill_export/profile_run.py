"""Which models a run directory offers to the profiler: teacher and student in PyTorch,
and every exported student artifact in its runtime."""

from __future__ import annotations

from distill_export.profile import Bench, count_macs, count_params, onnx_bench, torch_bench
from distill_export.rundir import RunDir


def benches_for_run(config, run: RunDir) -> list[Bench]:
    import torch

    from distill_export.device import resolve_device
    from distill_export.distill import load_student
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.train_teacher import load_teacher

    device = resolve_device(config.device).type
    teacher_path = config.teacher.path or run.require("teacher.pt", "train-teacher")
    teacher = load_teacher(teacher_path)
    shapes = load_checkpoint(teacher_path, kind="teacher")["meta"]["input_shapes"]
    student_path = run.require("student.pt", "distill")
    student, meta = load_student(student_path)
    student_shape = tuple(meta["input_shape"])

    gen = torch.Generator().manual_seed(0)
    teacher_example = lambda b: {m: torch.randn(b, *s, generator=gen) for m, s in shapes.items()}  # noqa: E731
    student_example = lambda b: torch.randn(b, *student_shape, generator=gen)  # noqa: E731
    benches = [
        torch_bench("teacher", teacher, teacher_example, device, {
            "params": count_params(teacher), "macs": count_macs(teacher, teacher_example(1)),
            "size_bytes": _size(teacher_path),
        }),
        torch_bench("student", student, student_example, device, {
            "params": count_params(student), "macs": count_macs(student, student_example(1)),
            "size_bytes": _size(student_path),
        }),
    ]
    student_info = {"params": benches[1].info["params"], "macs": benches[1].info["macs"]}
    for fmt, art in run.load_report().get("exports", {}).items():
        path = run.file(art["path"])
        if art["runtime"] == "onnxruntime":
            benches.append(onnx_bench("student", fmt, path, student_shape, {**student_info, "size_bytes": _size(path)}))
    return benches


def _size(path) -> int:
    import os

    return os.path.getsize(path)
