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
import torch.nn.functional as F
from torch import nn

from distill_export import distributed as ddp
from distill_export import speed
from distill_export.data import Dataset
from distill_export.data.streaming import is_streamed
from distill_export.methods import DistillModule, Objective, SetupInfo, TermInputs, term_specs
from distill_export.metrics import classification_metrics
from distill_export.nets.checkpoint import load_checkpoint, load_state, save_checkpoint
from distill_export.nets.students import SplitNet, create_student
from distill_export.train import TrainSpec, predict, train_loop


def student_meta(config, data: Dataset, teacher_name: str) -> dict:
    spec = data.modalities[config.data.student_modality]
    return {
        "class_names": data.class_names,
        "input_name": spec.name,
        "input_shape": list(spec.shape),
        "input_layout": spec.layout,
        "norm_mean": spec.mean,
        "norm_std": spec.std,
        "teacher": teacher_name,
        "dataset": data.name,
    }


def new_student(config, data: Dataset) -> SplitNet:
    """The same initial weights for baseline and student: seeded, or from --student-init."""
    from distill_export.nets.student_init import init_student

    spec = data.modalities[config.data.student_modality]
    torch.manual_seed(config.seed)
    model = create_student(config.student.name, data.num_classes, in_channels=spec.shape[0],
                           input_size=input_size(spec))
    if config.student.init_weights:
        init_student(model, config.student.init_weights, config.student.name)
    return model


def input_size(spec) -> int:
    """The smaller spatial side of an image-like (C, H, W) modality, 0 for other shapes."""
    return int(min(spec.shape[1:])) if len(spec.shape) == 3 else 0


def load_student(path) -> tuple[SplitNet, dict]:
    payload = load_checkpoint(path, kind="student")
    kw = payload["arch_kwargs"]
    model = create_student(payload["arch"], kw["num_classes"], kw["in_channels"], kw.get("input_size", 0))
    return load_state(model, payload["state_dict"], path).eval(), payload["meta"]


def test_predictions(model: nn.Module, data: Dataset, modality: str, device) -> np.ndarray:
    """(N_test,) predicted classes on the test split (read once, at the end of a run)."""
    x = data.test.inputs[modality].to(device)
    _, logits = predict(model.forward_features, x, len(data.test))
    return logits.argmax(1).numpy()


def evaluate_student(model: nn.Module, data: Dataset, modality: str, device) -> dict:
    pred = test_predictions(model, data, modality, device)
    return classification_metrics(np.eye(data.num_classes)[pred], data.test.labels.numpy(), data.num_classes)


def _val_accuracy_fn(model: SplitNet, data: Dataset, modality: str, device):
    x = data.val.inputs[modality].to(device)
    y = data.val.labels.numpy()

    def val_accuracy() -> float:
        _, logits = predict(model.forward_features, x, len(data.val))
        return float((logits.argmax(1).numpy() == y).mean())

    return val_accuracy


def labels_only(specs) -> bool:
    """True when the objective (term_specs) is CE alone: it reads nothing from the teacher."""
    return all(s.name == "ce" for s in specs)


def train_baseline(config, data: Dataset, device, quiet: bool = False, augment=None,
                   checkpoint=None, on_epoch=None, label: str = "baseline") -> tuple[SplitNet, dict]:
    """Labels only, labeled rows only (with the student's augmentation, if any)."""
    modality = config.data.student_modality
    model = new_student(config, data).to(device)
    labeled = data.train.labeled.nonzero().squeeze(1)
    column = data.train.inputs[modality]
    x = (column.take(labeled) if is_streamed(column) else column[labeled]).to(device)
    y = data.train.labels[labeled].to(device)
    forward, fetch, inputs = speed.student_step(model, x, config, device, augment)

    def batch_loss(rows, xb=None):
        rows = rows.to(device)
        return F.cross_entropy(forward(inputs(rows, xb)), y[rows]) * ddp.row_share(len(rows))  # 1.0 in one process

    spec = dataclasses.replace(_spec(config, device), rows_per_epoch=len(data.train))  # same steps as the student
    result = train_loop(
        [model], batch_loss, len(y), _val_accuracy_fn(model, data, modality, device), spec,
        label, quiet, on_epoch=on_epoch, checkpoint=checkpoint, fetch=fetch,
    )
    return model, {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                   "history": result.history}


def build_objective(config, data: Dataset, student: SplitNet, teacher_feature_dim: int) -> Objective:
    """The objective config.distill describes, with its learned parts built for these models."""
    objective = Objective(term_specs(config.distill), kd_impl=config.distill.kd_impl)
    objective.setup(SetupInfo(data.num_classes, student.feature_dim or 0, teacher_feature_dim))
    return objective


def train_student(
    config, data: Dataset, teacher_logits: torch.Tensor | None, teacher_feats: torch.Tensor, device,
    quiet: bool = False, online_teacher=None, augment=None, on_epoch=None, label: str = "student ",
    checkpoint=None,
) -> tuple[SplitNet, dict]:
    """Distill on every training row with the configured objective (methods/).

    teacher_logits: (N_train, C) and teacher_feats: (N_train, D), computed once (the cache);
    either may be None/empty when no term needs it. With `augment` (a batch transform) the
    teacher must see each augmented batch: online_teacher(rows, x_batch) -> (feats, logits)
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
    teacher_dim = teacher_feats.shape[1] if teacher_feats is not None and teacher_feats.dim() == 2 else 0
    module = DistillModule(student, build_objective(config, data, student, teacher_dim)).to(device)
    needs = module.objective.needs
    x = data.train.inputs[modality].to(device)
    y = data.train.labels.to(device)
    t_logits = teacher_logits.to(device) if teacher_logits is not None and "logits" in needs else None
    t_feats = mean = std = None
    if "features" in needs:
        # Standardised per dimension with training-set statistics, so the feature weight is scale-free.
        mean, std = teacher_feats.mean(0), teacher_feats.std(0).clamp(min=1e-6)
        t_feats = ((teacher_feats - mean) / std).to(device) if online_teacher is None else None
        mean, std = mean.to(device), std.to(device)

    forward, fetch, inputs = speed.student_step(module, x, config, device, augment)

    def batch_loss(rows, xb=None):
        rows = rows.to(device)
        xb = inputs(rows, xb)
        if online_teacher is not None:
            tf, tl = online_teacher(rows, xb)
            tf = (tf - mean) / std if mean is not None else None
        else:
            tl = t_logits[rows] if t_logits is not None else None
            tf = t_feats[rows] if t_feats is not None else None
        logits, side = forward(xb)  # through DDP (and torch.compile) when they are on
        return module.objective(TermInputs(logits, y[rows], tl, tf, side))

    result = train_loop(
        [module], batch_loss, len(y), _val_accuracy_fn(student, data, modality, device), _spec(config, device),
        label, quiet, on_epoch=on_epoch, checkpoint=checkpoint, fetch=fetch,
    )
    terms = [s.to_dict() for s in module.objective.specs]
    return student, {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                     "history": result.history, "terms": terms, "distilled": True}


def _spec(config, device=None) -> TrainSpec:
    cfg = config.distill
    return TrainSpec(cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay, seed=config.seed,
                     autocast=speed.autocast_on(config, device))


def save_student(path, model: SplitNet, config, data: Dataset, teacher_name: str, extra: dict) -> None:
    spec = data.modalities[config.data.student_modality]
    save_checkpoint(
        path, model, kind="student", arch=config.student.name,
        arch_kwargs={"num_classes": data.num_classes, "in_channels": spec.shape[0], "input_size": input_size(spec)},
        meta={**student_meta(config, data, teacher_name), **extra},
    )
