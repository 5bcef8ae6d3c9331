"""A checkpoint's description of its model (arch, arch_kwargs, meta) is data from a file, checked
before anything is built from it (issue 24, fourth audit B1/B2):

* ``student_arch``: the arch must be a registered student. A ``package.module:factory`` arch
  is imported only when the user names the same factory (the run's config student.name): a
  file never chooses code to import and call (``os:abort``, ``this:s``).
* ``check_fits``: the model arch_kwargs describe is first built on the meta device (no memory),
  and each of its tensors must have the shape the file's state_dict holds for it, so a forged
  ``num_classes: 10**9`` or ``width: 10**6`` is refused before gigabytes are allocated.
* ``check_input_shapes``: meta's per-sample input shapes (what profile feeds the model) are
  lists of positive ints of at most MAX_SAMPLE_ELEMENTS values.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from distill_export.errors import CheckpointError

# One sample of one input: 2 GiB in float32, the bound ONNX feeds have (runtimes/onnx_bounds.py
# MAX_FEED_BYTES); a file's meta above it would make profile allocate that much per row.
MAX_SAMPLE_ELEMENTS = 2**29
STUDENT_INTS = {"num_classes": 1, "in_channels": 1, "input_size": 0}  # arch_kwargs key -> smallest value


def student_arch(path, payload: dict, factory: str | None, registered: list[str]) -> tuple[str, dict]:
    """(arch, arch_kwargs) of a student checkpoint, or a one-line CheckpointError naming the file."""
    arch = payload.get("arch")
    known = ", ".join(registered)
    if not isinstance(arch, str):
        raise CheckpointError(f"{path}: student arch {arch!r} is not a student name (known students: {known})")
    if ":" in arch and arch != factory:
        raise CheckpointError(
            f"{path}: student arch {arch[:120]!r} is not a registered student (known students: {known}); a checkpoint "
            "never names code to import: a package.module:factory student loads only in a run whose student.name is "
            "that factory")
    if ":" not in arch and arch not in registered:
        raise CheckpointError(f"{path}: student arch {arch[:120]!r} is not a registered student (known students: {known})")
    kw = payload.get("arch_kwargs")
    if not isinstance(kw, dict):
        raise CheckpointError(f"{path}: arch_kwargs is a {type(kw).__name__}, not a dict")
    for key, least in STUDENT_INTS.items():
        value = kw.get(key, 0 if key == "input_size" else None)
        if type(value) is not int or value < least:  # noqa: E721 - a bool is not a count
            raise CheckpointError(f"{path}: arch_kwargs {key} is {str(value)[:40]!r}; a student's {key} is an "
                                  f"integer >= {least}")
    return arch, kw


def check_fits(path, build: Callable[[], nn.Module], state_dict, arch_kwargs: dict, what: str) -> None:
    """Build the model on the meta device (no memory) and refuse, naming the first tensor, a
    model whose tensors are not the shapes the file holds (or that arch_kwargs cannot build)."""
    shown = ", ".join(f"{k}={str(v)[:40]}" for k, v in list(arch_kwargs.items())[:8])
    try:
        with torch.device("meta"):
            probe = build()
    except Exception as exc:  # noqa: BLE001 - a forged arch_kwargs: any error is the file's
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: arch_kwargs ({shown}) do not build a {what}: "
                              f"{type(exc).__name__}: {first[:160]}") from None
    if not isinstance(state_dict, dict):
        return  # load_state names it
    for key, tensor in probe.state_dict().items():
        held = state_dict.get(key)
        if not isinstance(held, torch.Tensor):
            raise CheckpointError(f"{path}: arch_kwargs ({shown}) describe a {what} with a tensor {key[:80]!r} the "
                                  "file does not hold; refused before building it")
        if tuple(held.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: arch_kwargs ({shown}) describe a {what} whose {key[:80]!r} is "
                                  f"{tuple(tensor.shape)}; the file holds {tuple(held.shape)}: refused before "
                                  "building it")


def check_input_shapes(path, meta, field: str) -> None:
    """meta[field]: one shape (student input_shape) or {modality: shape} (teacher input_shapes)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is a {type(meta).__name__}, not a dict")
    value = meta.get(field)
    if value is None:
        return
    shapes = value if isinstance(value, dict) else {"": value}
    for name, shape in shapes.items():
        where = f"meta {field}" + (f" {str(name)[:40]!r}" if name else "")
        if (not isinstance(shape, (list, tuple)) or not shape
                or any(type(d) is not int or d < 1 for d in shape)):  # noqa: E721
            raise CheckpointError(f"{path}: {where} is {str(shape)[:80]}; a per-sample input shape is a list of "
                                  "positive integers")
        if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise CheckpointError(f"{path}: {where} {list(shape)} holds {math.prod(shape):,} values per sample, above "
                                  f"the limit of {MAX_SAMPLE_ELEMENTS:,} (2 GiB in float32); refused before "
                                  "allocating an input")
