"""One training loop for the teacher, the baseline and the distilled student.

Each caller supplies ``batch_loss(rows) -> loss`` (or ``(loss, {part: value})``, whose
parts are averaged into the history) over row indices of its training set and
``val_accuracy() -> float``; the loop owns the optimiser, schedule, progress bar and
best-epoch selection on validation. ``on_epoch(epoch, val_accuracy)`` runs after each
epoch (tune's pruning raises from it).

With a ``Checkpoint``, the loop writes its whole state after every epoch, atomically (a
temporary file renamed into place): the models, optimiser, scheduler, RNG states (torch,
numpy, python, CUDA, the loop's batch-order generator), the epoch, the best-so-far and the
history. When the file is there (and was written for the same training: its ``key``), the
loop continues after its last epoch, so a killed run resumes with the metrics an
uninterrupted one would have had. The file holds only tensors, numbers, strings and
lists/dicts of them, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from distill_export.interrupts import raise_pending


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
    # bf16 autocast around each batch's forward and loss (CUDA only; the callers decide).
    autocast: bool = False


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)


CHECKPOINT_FORMAT = "distill-export/train-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """Where one training writes its per-epoch state, and what it is a state of: a checkpoint
    whose key differs (other settings, another model) is not resumed from."""

    path: Path
    key: str = ""


def _rng_state() -> dict:
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(ckpt: Checkpoint, key: str) -> dict | None:
    """The saved state, or None (no file, another training's file, or unreadable: start afresh)."""
    if not ckpt.path.is_file():
        return None
    from rich.console import Console

    try:
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is not fatal: the training starts again
        from distill_export.nets.checkpoint import load_failure

        Console(stderr=True, markup=False, emoji=False).print(f"warning: {ckpt.path} is unreadable ({load_failure(exc)[:120]}); training from the start",
                                   highlight=False, soft_wrap=True)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("key") != key:
        return None  # written for other settings: not ours to continue
    return state


def _checkpoint_key(ckpt: Checkpoint, spec: "TrainSpec", n_rows: int, modules: list[nn.Module]) -> str:
    import hashlib

    shapes = [[(k, tuple(v.shape)) for k, v in m.state_dict().items()] for m in modules]
    return f"{ckpt.key}|{spec}|rows={n_rows}|{hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]}"


def train_loop(
    modules: Iterable[nn.Module],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    val_accuracy: Callable[[], float],
    spec: TrainSpec,
    label: str,
    quiet: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    checkpoint: Checkpoint | None = None,
    fetch: Callable[[list[torch.Tensor]], Iterable] | None = None,
) -> TrainResult:
    """fetch(batches) -> one payload per batch of row indices (a DataLoader that decodes them in
    workers, data/streaming.py); batch_loss(rows, payload) then gets it. Without fetch,
    batch_loss(rows) indexes in-memory tensors itself.

    Under torchrun (distributed.py) every rank draws the same global order and batch_loss gets
    this rank's shard of each global batch; rank 0 alone reads and writes the checkpoint."""
    from distill_export import distributed as ddp

    quiet = quiet or not ddp.is_main()
    modules = list(modules)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
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
    start_epoch = 0
    key = _checkpoint_key(checkpoint, spec, n_rows, modules) if checkpoint is not None else ""
    saved = _load_checkpoint(checkpoint, key) if checkpoint is not None and ddp.is_main() else None
    if checkpoint is not None:
        saved = ddp.broadcast_object(saved)  # every rank continues from rank 0's state
    if saved is not None:  # continue after the last finished epoch, exactly where it stood
        for m, state in zip(modules, saved["models"]):
            m.load_state_dict(state)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["rng"]["loop"])
        _set_rng_state(saved["rng"])
        start_epoch = saved["epoch"]
        history = list(saved["history"])
        best = TrainResult(best_epoch=saved["best"]["epoch"], best_val_accuracy=saved["best"]["val_accuracy"])
        best_states = saved["best"]["states"] if saved["best"]["states"] is not None else saved["models"]
        best_states = best_states if best.best_epoch > 0 else None
    columns = (
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(label, total=spec.epochs * steps_per_epoch, status="",
                                 completed=start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, spec.epochs):
            raise_pending()  # a SIGTERM or Ctrl-C something below swallowed: stop now
            for m in modules:
                m.train()
            passes = -(-per_epoch // n_rows)
            order = torch.cat([torch.randperm(n_rows, generator=gen) for _ in range(passes)])[:per_epoch]
            if fetch is None and device.type == "cuda":  # one pinned, non-blocking copy an epoch, not one a step
                order = order.pin_memory().to(device, non_blocking=True)
            # The epoch's sums stay where the loss is (fp64, the order Python summed floats in: the
            # same numbers) and are read once at the epoch's end, so no step waits for the device.
            total, count = None, 0
            part_sums: dict[str, torch.Tensor | float] = {}
            batches = [ddp.shard(order[start : start + spec.batch_size]) for start in range(0, per_epoch, spec.batch_size)]
            payloads = fetch(batches) if fetch is not None else None
            for rows, payload in zip(batches, payloads if payloads is not None else batches):
                with torch.autocast("cuda", dtype=torch.bfloat16) if spec.autocast else contextlib.nullcontext():
                    loss = batch_loss(rows) if fetch is None else batch_loss(rows, payload)
                loss, parts = loss if isinstance(loss, tuple) else (loss, {})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total = _add(total, loss, len(rows))
                for name, value in parts.items():
                    part_sums[name] = _add(part_sums.get(name), value, len(rows))
                count += len(rows)
                progress.advance(task)
            for m in modules:
                m.eval()
            acc = ddp.broadcast_object(val_accuracy())  # rank 0's: every rank picks the same best epoch
            total, part_sums = _read_sums(total, part_sums)  # the epoch's one device -> host read
            _check_finite(total / max(count, 1), label, epoch + 1, spec)  # before a checkpoint keeps it
            entry = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_accuracy": acc}
            if part_sums:
                entry["train_loss_parts"] = {k: v / max(count, 1) for k, v in part_sums.items()}
            history.append(entry)
            if acc > best.best_val_accuracy:
                best = TrainResult(best_epoch=epoch + 1, best_val_accuracy=acc)
                best_states = [copy.deepcopy(m.state_dict()) for m in modules]
            if checkpoint is not None and ddp.is_main():
                _save_checkpoint(checkpoint.path, {
                    "format": CHECKPOINT_FORMAT, "key": key, "label": label.strip(), "epoch": epoch + 1,
                    "epochs": spec.epochs, "models": [m.state_dict() for m in modules],
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": {"loop": gen.get_state(), **_rng_state()},
                    # the best states are the current ones when this epoch is the best (stored once)
                    "best": {"epoch": best.best_epoch, "val_accuracy": best.best_val_accuracy,
                             "states": None if best.best_epoch == epoch + 1 else best_states},
                    "history": history,
                })
            progress.update(task, status=f"epoch {epoch + 1}/{spec.epochs} val score {acc:.3f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, acc)
    for m, state in zip(modules, best_states or []):
        m.load_state_dict(state)
        m.eval()
    for m in modules:
        ddp.sync_from_main(m)
    best.history = history
    return best


def _check_finite(loss: float, label: str, epoch: int, spec: TrainSpec) -> None:
    """Stop a training whose epoch loss is NaN or infinite (every later step would be too, and
    its model would be saved and exported as if trained). Read once an epoch, from the sum the
    epoch keeps anyway; under torchrun every rank stops together (one flag all-reduced)."""
    import math

    from distill_export import distributed as ddp
    from distill_export.errors import TrainingDiverged

    if ddp.any_rank(not math.isfinite(loss)):
        shown = loss if not math.isfinite(loss) else "nan or inf on another process"
        raise TrainingDiverged(
            f"training of {label.strip()!r} stopped: its loss is {shown} (not finite) in epoch {epoch} of "
            f"{spec.epochs}; nothing was saved under a final name. Lower its learning rate (now {spec.lr:g}) "
            "or check its initial weights")


def _add(acc, value, n: int):
    """acc + value·n: on the device for a tensor (fp64, as Python adds floats), else a float."""
    if isinstance(value, torch.Tensor):
        term = value.detach().to(torch.float64) * n
        return term if acc is None else acc + term
    return (0.0 if acc is None else acc) + float(value) * n


def _read_sums(total, part_sums: dict) -> tuple[float, dict[str, float]]:
    """The epoch's sums as floats, the device's copied to the host in one read."""
    names = [k for k, v in part_sums.items() if isinstance(v, torch.Tensor)]
    held = ([total] if isinstance(total, torch.Tensor) else []) + [part_sums[k] for k in names]
    read = iter(torch.stack([v.reshape(()).to(held[0].device) for v in held]).tolist() if held else [])
    total = next(read) if isinstance(total, torch.Tensor) else (0.0 if total is None else total)
    return total, {k: next(read) if k in names else v for k, v in part_sums.items()}


def _save_checkpoint(path: Path, state: dict) -> None:
    from distill_export.files import torch_save

    torch_save(state, path)  # same state, same bytes


def checkpoint_progress(path: Path) -> tuple[int, int] | None:
    """(finished epochs, epochs) of a training checkpoint, or None if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]), int(state["epochs"])
    except Exception:
        return None


@torch.no_grad()
def predict(fn: Callable, inputs, n_rows: int, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Run fn(batch) -> (features, logits) over all rows; inputs is a tensor or dict of tensors
    (or streamed columns, data/streaming.py: then decoded in the data's workers)."""
    from distill_export.data.streaming import in_order, is_streamed

    if is_streamed(inputs):
        batches = in_order(inputs, n_rows, batch_size)
    else:
        batches = ({k: v[start : start + batch_size] for k, v in inputs.items()} if isinstance(inputs, dict)
                   else inputs[start : start + batch_size] for start in range(0, n_rows, batch_size))
    feats, logits = [], []
    for batch in batches:
        f, out = fn(batch)
        feats.append(f.float().cpu())
        logits.append(out.float().cpu())
    return torch.cat(feats), torch.cat(logits)
