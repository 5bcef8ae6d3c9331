"""Distillation rounds (distill.rounds > 1): co-training through the student.

Round 1 distills from the teacher as configured. Each later round distills a fresh student (the
same seeded init and optimiser steps as the baseline) from a new teacher, a product of experts:

    log p_{r+1}(y | x) = log_softmax(student_r(x_s) / T_s) + Σ_m log_softmax(expert_m(x_m) / T_m)

  * student_r: the previous round's student on its own modality, temperature-scaled on val;
  * expert_m, for each modality the student does not see: re-fitted from its seeded init on the
    labeled rows plus the unlabeled rows labeled by student_r (co-training, Blum & Mitchell 1998:
    each view learns from the other view's labels), best epoch and temperature on val.

Why: an expert of the other modality fitted to the few labeled rows is weak (captioned_digits: a
caption expert on 50 captions reaches ~34% val), so its product with the image expert adds a
little; fitted to 3,000 captions the student labeled it reaches ~55%, and the product then carries
much more of what the captions know. The self-training control gets the same rounds with no other
expert (its next teacher is its own previous student), so the two still differ only in the other
modality. The teacher the run saves, exports and profiles is round 1's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def student_logits(student, x: torch.Tensor, device) -> torch.Tensor:
    """(N, C) raw logits of the student over x (N, ...), in eval mode, on the CPU."""
    from distill_export.train import predict

    student.eval()
    return predict(student.forward_features, x.to(device), len(x))[1]


def expert_labels(data, pseudo: torch.Tensor) -> torch.Tensor:
    """(N_train,) the labels a re-fitted expert learns: the true label where a row has one, the
    previous student's `pseudo` label elsewhere."""
    return torch.where(data.train.labeled, data.train.labels, pseudo.to(data.train.labels.dtype))


def refit_expert(config, data, device, modality: str, pseudo: torch.Tensor, quiet: bool, label: str):
    """A one-modality late-fusion teacher trained from its seeded init on every training row:
    the true label where there is one, `pseudo` (N_train,) elsewhere; calibrated on val.
    Returns (expert teacher, {best_epoch, best_val_accuracy, temperature, pseudo_labeled_rows})."""
    from distill_export.nets.teacher import LateFusionTeacher
    from distill_export.tasks import get_task
    from distill_export.train import TrainSpec
    from distill_export.train_teacher import train_experts, teacher_kwargs

    cfg = config.teacher
    expert = LateFusionTeacher(**teacher_kwargs(data, cfg.width, 0.0, [modality], "late")).to(device)
    labeled = data.train.labeled
    y = expert_labels(data, pseudo).to(device)
    x = {modality: data.train.inputs[modality].to(device)}
    val_x = {modality: data.val.inputs[modality].to(device)}
    spec = TrainSpec(cfg.epochs, cfg.lr, cfg.batch_size, seed=config.seed, rows_per_epoch=len(y))
    result = train_experts(expert, x, y, val_x, data.val.labels.to(device), spec, label, quiet, None,
                           get_task(config.task))
    info = {**result.experts[modality], "temperature": float(expert.temperatures[0]),
            "pseudo_labeled_rows": int((~labeled).sum())}
    return expert.eval(), info


def next_round_targets(config, data, device, student, with_experts: bool, quiet: bool = False,
                       label: str = "") -> tuple[torch.Tensor, dict]:
    """The next round's teacher logits on the training rows, (N_train, C) log-probabilities, and
    what made them. with_experts=False (the self-training control): the student alone."""
    from distill_export.nets.teacher import fit_temperature

    modality = config.data.student_modality
    train_z = student_logits(student, data.train.inputs[modality], device)  # (N_train, C)
    val_z = student_logits(student, data.val.inputs[modality], device)  # (N_val, C)
    t_student = fit_temperature(val_z, data.val.labels)
    log_p = F.log_softmax(train_z / t_student, dim=1)
    val_log_p = F.log_softmax(val_z / t_student, dim=1)
    info = {"student_temperature": t_student, "experts": {}}
    if with_experts:
        pseudo = train_z.argmax(1)  # the student's labels for the rows that have none
        for m in sorted(data.modalities):
            if m == modality:
                continue
            expert, info["experts"][m] = refit_expert(config, data, device, m, pseudo, quiet, f"{label}expert ")
            with torch.no_grad():
                log_p = log_p + F.log_softmax(calibrated_expert_logits(expert, m, data.train.inputs[m], device), dim=1)
                val_log_p = val_log_p + F.log_softmax(calibrated_expert_logits(expert, m, data.val.inputs[m], device), dim=1)
    info["teacher_val_accuracy"] = float((val_log_p.argmax(1) == data.val.labels).float().mean())
    return log_p, info


def calibrated_expert_logits(expert, modality: str, x: torch.Tensor, device) -> torch.Tensor:
    """(N, C) calibrated logits of a one-modality expert teacher over x."""
    from distill_export.train import predict

    return predict(lambda v: (v, expert.expert_logits({modality: v})[modality]), x.to(device), len(x))[1]
