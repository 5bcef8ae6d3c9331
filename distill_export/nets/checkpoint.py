"""Checkpoints: a plain dict of tensors and strings, saved atomically, loaded with weights_only=True.

Layout: {"format", "kind", "arch", "arch_kwargs", "state_dict", "meta"}. Nothing in it
needs unpickling code, so a checkpoint from anyone is safe to open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_export.errors import CheckpointError
from distill_export.files import torch_save

FORMAT = "distill-export/1"


def save_checkpoint(
    path: str | Path, model: nn.Module, kind: str, arch: str, arch_kwargs: dict, meta: dict
) -> None:
    payload = {
        "format": FORMAT,
        "kind": kind,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    torch_save(payload, path)  # same model, same bytes


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with code, truncated file...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a distill-export checkpoint (no '{FORMAT}' format tag)")
    if kind and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r}, expected a {kind!r}")
    return payload


def load_state(model: nn.Module, state_dict: dict, path: str | Path) -> nn.Module:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the model: {first[:200]}") from None
    return model


def read_state_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A bare state_dict from .safetensors or a torch.save'd file (weights_only: never unpickles
    code); `what` names the file in the one-line CheckpointError ("--student-init x.pt")."""
    if not path.is_file():
        raise CheckpointError(f"{what} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{what} is not a readable state_dict: {first[:200]}") from None
