"""How a training step runs on the device: DDP, bf16 autocast, channels_last, torch.compile,
and where its batches come from (in memory, or streamed by DataLoader workers).

On CPU nothing here changes the computation: fp32, NCHW, eager, so CPU results stay
bit-identical to a plain loop. On CUDA (distill.amp, distill.channels_last, distill.compile)
the student's module trains under bf16 autocast, in channels_last memory format, and
optionally compiled.
"""

from __future__ import annotations

import torch
from torch import nn

from distill_export import distributed as ddp
from distill_export.data.streaming import StreamSettings, batch_fetcher, is_streamed, worker_augment
from distill_export.errors import ConfigError


def autocast_on(config, device) -> bool:
    return device is not None and device.type == "cuda" and config.distill.amp == "bf16"


def channels_last_on(config, device) -> bool:
    return device.type == "cuda" and bool(config.distill.channels_last)


def check_compile(config, device) -> None:
    if config.distill.compile and device.type != "cuda":
        raise ConfigError("--compile (distill.compile) is for CUDA training; on CPU train eagerly (drop --compile)")


def augments_in_workers(x, augment) -> bool:
    """Streamed inputs take distill.augment per sample in the DataLoader workers (not per batch)."""
    return augment is not None and is_streamed(x)


def prepare(module: nn.Module, x, config, device, conv_student: bool = True, augment: bool = False):
    """(the forward to call in each step, train_loop's fetch or None) for one trainable module.

    x: the training inputs, a tensor / StreamedModality or a dict of them. The forward is the
    DDP wrapper under torchrun (its forward syncs gradients), compiled with distill.compile.
    augment: streamed batches come augmented from the workers (streaming.worker_augment)."""
    if conv_student and channels_last_on(config, device):
        module.to(memory_format=torch.channels_last)
    forward = ddp.wrap(module, device)
    if conv_student and config.distill.compile:
        check_compile(config, device)
        forward = torch.compile(forward)
    fetch = None
    if is_streamed(x):
        transform = worker_augment(config.distill.augment, x.shape) if augment else None
        fetch = batch_fetcher(x, StreamSettings.from_config(config.data, device), augment=transform)
    return forward, fetch


def student_step(module: nn.Module, x, config, device, augment=None):
    """(forward, fetch, inputs) for a conv student's training step (prepare's pair, plus
    inputs(rows, xb=None) -> the (B, C, H, W) batch: x[rows], or xb when the workers decoded
    it, in the training memory format and augmented here unless the workers did it per sample)."""
    forward, fetch = prepare(module, x, config, device, augment=augment is not None)
    here = None if augments_in_workers(x, augment) else augment

    def inputs(rows: torch.Tensor, xb=None) -> torch.Tensor:
        xb = layout(x[rows] if xb is None else xb, config, device)
        return xb if here is None else here(xb)

    return forward, fetch, inputs


def layout(xb: torch.Tensor, config, device) -> torch.Tensor:
    """The batch in the memory format the module trains in: (B, C, H, W) channels_last on CUDA."""
    if xb.dim() == 4 and channels_last_on(config, device):
        return xb.contiguous(memory_format=torch.channels_last)
    return xb
