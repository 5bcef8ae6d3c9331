"""Stage 2: distill the single-modality student, and train the labels-only baseline.

Both start from the same initial weights and get the same number of optimiser steps, so ``kd_gain``
(student accuracy − baseline accuracy) measures what the teacher added.
The baseline learns from labeled rows only; the student distills on every training
row with the configured objective (methods/: a weighted sum of terms, CE only where a label exists).
"""

from __future__ import annotations

import dataclasses

import torch
import numpy as np
from torch import nn

from distill_export import distributed as ddp
from distill_export import speed
from distill_export.data import Dataset
from distill_export.data.augment import mix_batch, mixed_loss
from distill_export.methods import DistillModule, Objective, SetupInfo, TermInputs, term_specs
from distill_export.tasks import get_task
from distill_export.nets.model_io import input_size, new_student
from distill_export.nets.students import SplitNet, create_student
from distill_export.train import TrainSpec, predict, train_loop


def test_outputs(model: nn.Module, data: Dataset, modality: str, device, name: str = "student") -> np.ndarray:
    """(N_test, K) the student's outputs on the test split (read once, at the end of a run).
    Outputs that are not finite are refused in one line naming the model (`name`): NaN rows were
    scored as class 0 and the model saved and exported (twenty-first audit B3: a loss that stays
    finite, since training uses batch statistics, while eval-mode running statistics give NaN)."""
    x = data.test.inputs[modality].to(device)
    _, outputs = predict(model.forward_features, x, len(data.test))
    bad = ~torch.isfinite(outputs).reshape(outputs.shape[0], -1).all(1) if outputs.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        from distill_export.errors import TrainingDiverged

        raise TrainingDiverged(f"training of {name!r} ended with outputs that are not finite (NaN or inf on "
                               f"{int(bad.sum())} of {len(bad)} test rows); it is not scored and nothing was saved "
                               "under a final name: check its initial weights (--student-init) or lower its "
                               "learning rate")
    return outputs.numpy()


def evaluate_student(model: nn.Module, data: Dataset, modality: str, device, task) -> dict:
    return task.evaluate(test_outputs(model, data, modality, device), data.test.labels.numpy(), data)


def _val_score_fn(model: SplitNet, data: Dataset, modality: str, device, task):
    """() -> the task's validation score of `model` (higher is better): picks the best epoch."""
    x = data.val.inputs[modality].to(device)
    y = data.val.labels.numpy()

    def val_score() -> float:
        _, outputs = predict(model.forward_features, x, len(data.val))
        return task.score(outputs.numpy(), y)

    return val_score


def labels_only(specs) -> bool:
    """True when the objective (term_specs) is CE alone: it reads nothing from the teacher."""
    return all(s.name == "ce" for s in specs)


def train_baseline(config, data: Dataset, device, quiet: bool = False, augment=None,
                   checkpoint=None, on_epoch=None, label: str = "baseline") -> tuple[SplitNet, dict]:
    """Labels only, labeled rows only (with the student's augmentation, if any)."""
    task = get_task(config.task)
    modality = config.data.student_modality
    model = new_student(config, data).to(device)
    labeled = data.train.labeled.nonzero().squeeze(1)
    column = data.train.inputs[modality]
    x = (column[labeled] if isinstance(column, torch.Tensor) else column.take(labeled)).to(device)  # lazy stays lazy
    y = data.train.labels[labeled].to(device)
    forward, fetch, inputs = speed.student_step(model, x, config, device, augment)
    mixing = batch_mixer(config)

    def batch_loss(rows, xb=None):
        rows = rows.to(device)
        xb, mix = mixing(inputs(rows, xb))
        # 1.0 in one process
        return mixed_loss(task.supervised_loss, forward(xb), y[rows], mix) * ddp.row_share(len(rows))

    spec = dataclasses.replace(_spec(config, device), rows_per_epoch=len(data.train))  # same steps as the student
    result = train_loop(
        [model], batch_loss, len(y), _val_score_fn(model, data, modality, device, task), spec,
        label, quiet, on_epoch=on_epoch, checkpoint=checkpoint, fetch=fetch,
    )
    return model, {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                   "history": result.history}


def build_objective(config, data: Dataset, student: SplitNet, teacher_feature_dim: int) -> Objective:
    """The objective config.distill describes, with its learned parts built for these models."""
    objective = Objective(term_specs(config.distill), kd_impl=config.distill.kd_impl)
    task = get_task(config.task)
    objective.setup(SetupInfo(data.num_outputs, student.feature_dim or 0, teacher_feature_dim,
                              task=task.name, supervised_loss=task.supervised_loss))
    return objective


def train_student(
    config, data: Dataset, teacher_logits: torch.Tensor | None, teacher_feats: torch.Tensor, device,
    quiet: bool = False, online_teacher=None, augment=None, on_epoch=None, label: str = "student ",
    checkpoint=None,
) -> tuple[SplitNet, dict]:
    """Distill on every training row with the configured objective (methods/).

    teacher_logits: (N_train, C) and teacher_feats: (N_train, D), computed once (the cache);
    either may be None/empty when no term needs it. With `augment` (a batch transform) the
    teacher must see each augmented batch: online_teacher(rows, x_batch, mix) -> (feats, logits)
    replaces teacher_logits (None), and teacher_feats then only supplies standardisation stats.
    """
    specs = term_specs(config.distill)
    if labels_only(specs):
        # No teacher term: train exactly as the baseline does (labeled rows only, the same steps).
        # Distilling batches would mix in unlabeled rows whose CE is masked: with 10% of the
        # labels, a tenth of each batch would train. A lone CE term's weight only scales the
        # loss, which AdamW's update ignores (up to its eps), so the baseline's weight 1 is used.
        model, info = train_baseline(config, data, device, quiet, augment=augment, checkpoint=checkpoint,
                                     on_epoch=on_epoch, label=label)
        return model, {**info, "terms": [s.to_dict() for s in specs], "distilled": False}
    modality = config.data.student_modality
    student = new_student(config, data)
    # (N, D_t) vectors or (N, D_t, h, w) maps (a detector's): D_t channels either way
    teacher_dim = teacher_feats.shape[1] if teacher_feats is not None and teacher_feats.dim() >= 2 else 0
    module = DistillModule(student, build_objective(config, data, student, teacher_dim)).to(device)
    needs = module.objective.needs
    x = data.train.inputs[modality].to(device)
    y = data.train.labels.to(device)
    t_logits = teacher_logits.to(device) if teacher_logits is not None and "logits" in needs else None
    t_feats = mean = std = None
    if "features" in needs:
        if teacher_feats.dim() == 2:
            # Standardised per dimension with training-set statistics, so the feature weight is scale-free.
            mean, std = teacher_feats.mean(0), teacher_feats.std(0).clamp(min=1e-6)
            t_feats = ((teacher_feats - mean) / std).to(device) if online_teacher is None else None
            mean, std = mean.to(device), std.to(device)
        else:  # (N, D_t, h, w) maps: PKD normalises each image's channels itself (no second copy)
            t_feats = teacher_feats.to(device) if online_teacher is None else None

    forward, fetch, inputs = speed.student_step(module, x, config, device, augment)
    mixing = batch_mixer(config)

    def batch_loss(rows, xb=None):
        rows = rows.to(device)
        xb, mix = mixing(inputs(rows, xb))
        if online_teacher is not None:
            tf, tl = online_teacher(rows, xb, mix)  # the teacher sees the batch the student sees
            tf = None if "features" not in needs else (tf - mean) / std if mean is not None else tf
        else:
            tl = t_logits[rows] if t_logits is not None else None
            tf = t_feats[rows] if t_feats is not None else None
        logits, side = forward(xb)  # through DDP (and torch.compile) when they are on
        return objective_under_mix(module.objective, TermInputs(logits, y[rows], tl, tf, side), mix)

    result = train_loop(
        [module], batch_loss, len(y), _val_score_fn(student, data, modality, device, get_task(config.task)),
        _spec(config, device),
        label, quiet, on_epoch=on_epoch, checkpoint=checkpoint, fetch=fetch,
    )
    terms = [s.to_dict() for s in module.objective.specs]
    return student, {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                     "history": result.history, "terms": terms, "distilled": True}


def batch_mixer(config):
    """batch -> (batch, Mix | None): distill.mix on the student's (B, C, H, W) batch, or nothing."""
    kind, alpha = config.distill.mix, config.distill.mix_alpha
    if kind == "none":
        return lambda xb: (xb, None)
    return lambda xb: mix_batch(xb, kind, alpha)


def objective_under_mix(objective, batch: TermInputs, mix):
    """The objective on a mixed batch: lam * (with each row's labels) + (1 - lam) * (with its
    partner's), term by term; a term that reads no label gives the same value twice."""
    if mix is None:
        return objective(batch)
    total_a, parts_a = objective(batch)
    total_b, parts_b = objective(dataclasses.replace(batch, labels=batch.labels[mix.perm]))
    lam = mix.lam
    return lam * total_a + (1 - lam) * total_b, {k: lam * v + (1 - lam) * parts_b[k] for k, v in parts_a.items()}


def _spec(config, device=None) -> TrainSpec:
    cfg = config.distill
    return TrainSpec(cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay, seed=config.seed,
                     autocast=speed.autocast_on(config, device))
