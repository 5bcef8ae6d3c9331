"""The distill stage's trainings: the distilled student (with its rounds), the labels-only
baseline, the self-training control, and the per-training checkpoints they resume from.
pipeline.stage_distill composes them and records the result."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from distill_export.config import RunConfig
from distill_export.rundir import RunDir


@contextmanager
def timed(run: RunDir, stage: str):
    start = time.perf_counter()
    yield
    run.update_report(timings={stage: round(time.perf_counter() - start, 3)})


def teacher_path(config: RunConfig, run: RunDir) -> Path:
    return Path(config.teacher.path) if config.teacher.path else run.file("teacher.pt")


def training_checkpoint(config: RunConfig, run: RunDir, label: str):
    """Where the training `label` checkpoints each epoch; keyed by the settings that shape it,
    so a stage re-run with other settings starts afresh instead of continuing another training."""
    import hashlib
    import json

    from distill_export.train import Checkpoint

    shaping = {k: v for k, v in config.to_dict().items() if k in ("seed", "device", "data", "teacher", "student", "distill")}
    key = hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()
    return Checkpoint(run.checkpoint_path(label), f"{label}:{key}")


def student_name(label: str) -> str:
    """The checkpoint name of the student a label ("student ", "control ") trains."""
    return "student" if label.strip() == "student" else f"{label.strip()}_student"


def distill_from(config, run: RunDir, data, device, teacher, teacher_file, needs, quiet, label, cache_dir):
    """Teacher outputs (cached) then one distilled student. Returns (student, training info, cache info)."""
    from distill_export.distill import train_student
    from distill_export.teacher_cache import teacher_targets

    modality = config.data.student_modality
    # What the teacher sees when it makes the targets: every modality, or (teacher_view: student)
    # the student's only, the others' embeddings zeroed as in modality dropout.
    drop = tuple(m for m in data.modalities if m != modality) if config.distill.teacher_view == "student" else ()
    forward = lambda x: teacher.forward_features(x, drop=drop)  # noqa: E731
    targets = teacher_targets(config, run, data, forward, device, teacher.modality_names, drop, needs=needs,
                              teacher_file=teacher_file, cache_dir=cache_dir)
    name = student_name(label)
    student, info = train_student(config, data, targets.logits, targets.feats, device, quiet,
                                  online_teacher=targets.online, augment=targets.augment, label=label,
                                  checkpoint=training_checkpoint(config, run, name))
    return student, info, targets


def distill_rounds(config, run: RunDir, data, device, teacher, teacher_file, needs, quiet, label, cache_dir,
                    with_experts: bool = True):
    """Round 1 from `teacher`, then (distill.rounds > 1) each later round from the previous
    student times re-fitted experts of the other modalities (rounds.py; with_experts=False for
    the self-training control: the previous student alone). Returns the last round's student."""
    import dataclasses
    import hashlib

    from distill_export.distill import train_student
    from distill_export.rounds import next_round_targets

    student, info, targets = distill_from(config, run, data, device, teacher, teacher_file, needs, quiet,
                                           label, cache_dir)
    if config.distill.rounds == 1:
        return student, info, targets
    name = student_name(label)
    history = [{"round": 1, "best_val_accuracy": info["best_val_accuracy"]}]
    for r in range(2, config.distill.rounds + 1):
        logits, made = next_round_targets(config, data, device, student, with_experts, quiet,
                                          f"{label.strip()} round {r} ")
        # Keyed by its targets too: a checkpoint left by other targets (round 1 changed) is not resumed.
        ckpt = training_checkpoint(config, run, f"{name}_round{r}")
        ckpt = dataclasses.replace(ckpt, key=f"{ckpt.key}:{hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16]}")
        student, info = train_student(config, data, logits, None, device, quiet, label=f"{label.strip()} round {r} ",
                                      checkpoint=ckpt)
        history.append({"round": r, "teacher": made, "best_val_accuracy": info["best_val_accuracy"]})
    return student, {**info, "rounds": history}, targets


def self_training_control(config, run: RunDir, data, device, needs, quiet) -> tuple[dict, object]:
    """An image-only teacher of the same size on the same labeled rows, distilled the same way:
    what the unlabeled rows give without the other modality."""
    from distill_export.nets.model_io import load_teacher, save_expert_teacher
    from distill_export.tasks import get_task
    from distill_export.train_teacher import TeacherSource, evaluate_teacher, train_teacher, unlabeled_pool_score

    modality = config.data.student_modality
    path = run.file("control_teacher.pt")
    if not config.teacher.path and _is_product_of_experts(run.file("teacher.pt")):
        # The late teacher's image expert is that teacher (same seeded init, rows, steps and
        # temperature scaling; tests/test_captioned_digits.py checks it): reuse, don't retrain.
        training = save_expert_teacher(run.require("teacher.pt", "train-teacher"), modality, path)
    else:
        training = train_teacher(config, data, device, path, quiet, modalities=[modality], label="control teacher ",
                                 checkpoint=training_checkpoint(config, run, "control_teacher"))
    teacher = load_teacher(path, data).to(device)
    task = get_task(config.task)
    source = TeacherSource(str(path), trained=True)  # its metrics are recorded: of finite outputs only
    teacher_metrics = evaluate_teacher(teacher, data, device, task, source=source)
    student, info, _ = distill_rounds(config, run, data, device, teacher, path, needs, quiet, "control ",
                                       "control_teacher_outputs", with_experts=False)
    return {"teacher_accuracy": teacher_metrics[task.headline], "teacher_training": training,
            "teacher_unlabeled_pool": unlabeled_pool_score(teacher, data, device, task, source),
            "student_training": info}, student


def _is_product_of_experts(path) -> bool:
    """A late-fusion classification teacher (nets/teacher.py LateFusionTeacher), whose image
    expert is the control's teacher; a detection teacher's late fusion is one network."""
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.nets.teacher import TEACHER_FUSIONS

    return Path(path).is_file() and load_checkpoint(path, kind="teacher").get("arch") == TEACHER_FUSIONS["late"][0]


def labels_only_models(config, run: RunDir, data, device, specs, quiet):
    """No distillation (e.g. tune found none that pays): the student IS the baseline, one
    training, so kd_gain is 0 by construction and the report says no distillation ran.
    Returns (models, student training, baseline training, control, teacher-cache info)."""
    from distill_export.data.augment import make_augment
    from distill_export.distill import train_baseline

    with timed(run, "baseline"):
        baseline, base_train = train_baseline(config, data, device, quiet, augment=make_augment(config.distill.augment),
                                              checkpoint=training_checkpoint(config, run, "baseline"))
    kd_train = {**base_train, "terms": [s.to_dict() for s in specs], "distilled": False}
    control = ({"skipped": "labels_only: no term reads a teacher, so there is no control to run"}
               if config.distill.self_training_control else None)
    return ({"student": baseline, "baseline": baseline}, kd_train, base_train, control,
            {"status": "not used", "reason": "labels_only: no term reads the teacher"})


def draw_examples(config, run, data, device, task, teacher, outputs: dict) -> dict[str, str]:
    """The task's picture of a few test inputs with the student's and the teacher's outputs
    (Task.draw_examples), under plots/ for the report; {} when the task draws none."""
    from distill_export.train import predict

    from distill_export.tasks.base import Task

    n = min(8, len(data.test))
    if n == 0 or type(task).draw_examples is Task.draw_examples:  # the task draws none: no teacher pass
        return {}
    inputs = {m: v[:n].to(device) for m, v in data.test.inputs.items() if m in getattr(teacher, "modality_names", ())}
    try:
        _, teacher_out = predict(teacher.forward_features, inputs, n) if inputs else (None, None)
    except (RuntimeError, TypeError):  # an external teacher that takes other inputs: the student alone
        teacher_out = None
    panels = {"student": outputs["student"][:n]}
    if teacher_out is not None:
        panels["teacher"] = teacher_out.numpy()
    name = "detections.png"
    from distill_export.files import own_folder

    path = own_folder(run.file("plots")) / name
    path.parent.mkdir(exist_ok=True)
    drawn = task.draw_examples(data.test.inputs[config.data.student_modality][:n].numpy(), panels,
                               data.test.labels[:n].numpy(), data, path)
    return {"examples": name} if drawn else {}
