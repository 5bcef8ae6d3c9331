"""One training loop for the teacher, the baseline and the distilled student.

Each caller supplies ``batch_loss(rows) -> loss`` (or ``(loss, {part: value})``, whose
parts are averaged into the history) over row indices of its training set and
``val_accuracy() -> float``; the loop owns the optimiser, schedule, progress bar and
best-epoch selection on validation. ``on_epoch(epoch, val_accuracy)`` runs after each
epoch (tune's pruning raises from it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn


@dataclass
class TrainSpec:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 1e-4
    seed: int = 0
    # Rows drawn per epoch. Models that train on the labeled subset only (teacher,
    # baseline) set it to the full training-set size, so every model gets the same
    # number of optimiser steps: with 10% of the labels, a labels-only baseline would
    # otherwise get a tenth of the student's updates and look worse than it is.
    rows_per_epoch: int | None = None


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)


def train_loop(
    modules: Iterable[nn.Module],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    val_accuracy: Callable[[], float],
    spec: TrainSpec,
    label: str,
    quiet: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    modules = list(modules)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    per_epoch = spec.rows_per_epoch or n_rows
    steps_per_epoch = max(1, -(-per_epoch // spec.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(spec.seed)
    best = TrainResult(best_epoch=-1, best_val_accuracy=-1.0)
    best_states = None
    history: list[dict] = []
    columns = (
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(label, total=spec.epochs * steps_per_epoch, status="")
        for epoch in range(spec.epochs):
            for m in modules:
                m.train()
            passes = -(-per_epoch // n_rows)
            order = torch.cat([torch.randperm(n_rows, generator=gen) for _ in range(passes)])[:per_epoch]
            total, count = 0.0, 0
            part_sums: dict[str, float] = {}
            for start in range(0, per_epoch, spec.batch_size):
                rows = order[start : start + spec.batch_size]
                loss = batch_loss(rows)
                loss, parts = loss if isinstance(loss, tuple) else (loss, {})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(rows)
                for name, value in parts.items():
                    part_sums[name] = part_sums.get(name, 0.0) + float(value) * len(rows)
                count += len(rows)
                progress.advance(task)
            for m in modules:
                m.eval()
            acc = val_accuracy()
            entry = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_accuracy": acc}
            if part_sums:
                entry["train_loss_parts"] = {k: v / max(count, 1) for k, v in part_sums.items()}
            history.append(entry)
            if acc > best.best_val_accuracy:
                best = TrainResult(best_epoch=epoch + 1, best_val_accuracy=acc)
                best_states = [copy.deepcopy(m.state_dict()) for m in modules]
            progress.update(task, status=f"epoch {epoch + 1}/{spec.epochs} val acc {acc:.3f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, acc)
    for m, state in zip(modules, best_states or []):
        m.load_state_dict(state)
        m.eval()
    best.history = history
    return best


@torch.no_grad()
def predict(fn: Callable, inputs, n_rows: int, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Run fn(batch) -> (features, logits) over all rows; inputs is a tensor or dict of tensors."""
    feats, logits = [], []
    for start in range(0, n_rows, batch_size):
        sl = slice(start, start + batch_size)
        batch = {k: v[sl] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[sl]
        f, out = fn(batch)
        feats.append(f.float().cpu())
        logits.append(out.float().cpu())
    return torch.cat(feats), torch.cat(logits)
