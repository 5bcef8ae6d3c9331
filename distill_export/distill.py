"""Stage 2: distill the single-modality student, and train the labels-only baseline.

Both start from the same initial weights and get the same number of optimiser steps, so ``kd_gain``
(student accuracy − baseline accuracy) measures what the teacher added.
The baseline learns from labeled rows only; the student distills on every training
row, with the CE term only where a label exists (kd_loss's ignore_index).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill_export.data import IGNORE_INDEX, Dataset
from distill_export.errors import CheckpointError
from distill_export.losses import kd_loss
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
    spec = data.modalities[config.data.student_modality]
    torch.manual_seed(config.seed)
    model = create_student(config.student.name, data.num_classes, in_channels=spec.shape[0])
    if config.student.init_weights:
        path = Path(config.student.init_weights)
        try:
            payload = load_checkpoint(path, kind="student")
            state = payload["state_dict"]
        except CheckpointError:
            # Also accept a bare state_dict saved with torch.save(model.state_dict()).
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{path} is not a readable checkpoint: {str(exc)[:200]}") from None
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} holds no state_dict") from None
        load_state(model, state, path)
    return model


def load_student(path) -> tuple[SplitNet, dict]:
    payload = load_checkpoint(path, kind="student")
    kw = payload["arch_kwargs"]
    model = create_student(payload["arch"], kw["num_classes"], kw["in_channels"])
    return load_state(model, payload["state_dict"], path).eval(), payload["meta"]


def evaluate_student(model: nn.Module, data: Dataset, modality: str, device) -> dict:
    x = data.test.inputs[modality].to(device)
    _, logits = predict(model.forward_features, x, len(data.test))
    return classification_metrics(logits.numpy(), data.test.labels.numpy(), data.num_classes)


def _val_accuracy_fn(model: SplitNet, data: Dataset, modality: str, device):
    x = data.val.inputs[modality].to(device)
    y = data.val.labels.numpy()

    def val_accuracy() -> float:
        _, logits = predict(model.forward_features, x, len(data.val))
        return float((logits.argmax(1).numpy() == y).mean())

    return val_accuracy


def train_baseline(config, data: Dataset, device, quiet: bool = False, augment=None) -> tuple[SplitNet, dict]:
    """Labels only, labeled rows only (with the student's augmentation, if any)."""
    modality = config.data.student_modality
    model = new_student(config, data).to(device)
    labeled = data.train.labeled.nonzero().squeeze(1)
    x = data.train.inputs[modality][labeled].to(device)
    y = data.train.labels[labeled].to(device)

    def batch_loss(rows):
        rows = rows.to(device)
        xb = x[rows] if augment is None else augment(x[rows])
        return F.cross_entropy(model(xb), y[rows])

    spec = dataclasses.replace(_spec(config), rows_per_epoch=len(data.train))  # same steps as the student
    result = train_loop(
        [model], batch_loss, len(y), _val_accuracy_fn(model, data, modality, device), spec,
        "baseline", quiet,
    )
    return model, {"best_epoch": result.best_epoch, "history": result.history}


def train_student(
    config, data: Dataset, teacher_logits: torch.Tensor | None, teacher_feats: torch.Tensor, device,
    quiet: bool = False, online_teacher=None, augment=None,
) -> tuple[SplitNet, dict]:
    """KD on every training row: soft targets from the teacher, CE where a label exists.

    teacher_logits: (N_train, C) and teacher_feats: (N_train, D), computed once (the cache).
    With `augment` (a batch transform) the teacher must see each augmented batch:
    online_teacher(rows, x_batch) -> (feats, logits) replaces teacher_logits (None), and
    teacher_feats then only supplies feature standardisation statistics.
    """
    cfg = config.distill
    modality = config.data.student_modality
    model = new_student(config, data).to(device)
    x = data.train.inputs[modality].to(device)
    y = data.train.labels.to(device)
    t_logits = teacher_logits.to(device) if teacher_logits is not None else None
    modules: list[nn.Module] = [model]
    projector = None
    if cfg.beta > 0 and (teacher_feats.shape[1] == 0 or not model.feature_dim):
        from distill_export.errors import ConfigError

        who = "teacher" if teacher_feats.shape[1] == 0 else "student"
        raise ConfigError(f"feature distillation (distill.beta={cfg.beta}) needs features and the {who} "
                          "returns logits only: set --beta 0")
    if cfg.beta > 0:
        # Feature distillation: match a learned projection of the student's penultimate
        # features to the teacher's fused features, standardised so β is scale-free.
        mean, std = teacher_feats.mean(0), teacher_feats.std(0).clamp(min=1e-6)
        t_feats = ((teacher_feats - mean) / std).to(device)
        mean, std = mean.to(device), std.to(device)
        projector = nn.Linear(model.feature_dim, t_feats.shape[1]).to(device)
        modules.append(projector)

    def batch_loss(rows):
        rows = rows.to(device)
        xb = x[rows] if augment is None else augment(x[rows])
        if online_teacher is not None:
            tf, tl = online_teacher(rows, xb)
            tf = (tf - mean) / std if projector is not None else None
        else:
            tl, tf = t_logits[rows], (t_feats[rows] if projector is not None else None)
        feats, logits = model.forward_features(xb)
        loss = kd_loss(
            logits, tl, y[rows], temperature=cfg.temperature, alpha=cfg.alpha,
            ignore_index=IGNORE_INDEX, impl=cfg.kd_impl, check_label_range=False,
        )
        if projector is not None:
            loss = loss + cfg.beta * F.mse_loss(projector(feats), tf)
        return loss

    result = train_loop(
        modules, batch_loss, len(y), _val_accuracy_fn(model, data, modality, device), _spec(config),
        "student ", quiet,
    )
    return model, {"best_epoch": result.best_epoch, "history": result.history}


def _spec(config) -> TrainSpec:
    cfg = config.distill
    return TrainSpec(cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay, seed=config.seed)


def save_student(path, model: SplitNet, config, data: Dataset, teacher_name: str, extra: dict) -> None:
    spec = data.modalities[config.data.student_modality]
    save_checkpoint(
        path, model, kind="student", arch=config.student.name,
        arch_kwargs={"num_classes": data.num_classes, "in_channels": spec.shape[0]},
        meta={**student_meta(config, data, teacher_name), **extra},
    )
