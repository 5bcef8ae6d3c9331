"""--student-init: a student's initial weights from a local file.

Accepted: one of our student checkpoints, a state_dict saved by torch.save (loaded with
weights_only=True) or a .safetensors file, named either as our SplitNet names its tensors
(backbone.*, head.*) or as torchvision names them (features.*, classifier.*, conv1.*, fc.*,
which timm's resnets share). A wrapper dict ({"state_dict": ...}, {"model": ...}) and a DDP
"module." prefix are unwrapped. When the file's head has another class count (ImageNet's 1000
against the data's 10), the head keeps its fresh initialisation and a log line says so; any
other key or shape that does not match the architecture is a one-line CheckpointError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from distill_export.errors import CheckpointError

HEAD_PREFIX = "head."
_told: set[tuple[str, int]] = set()  # (file, classes) whose head replacement was logged: the
# student, its baseline and the preflight check all start from the same file; one line says it
console = Console(stderr=True, highlight=False, soft_wrap=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from distill_export.nets.checkpoint import read_state_file

    state = read_state_file(path, f"--student-init {path}")
    for wrapper in ("state_dict", "model"):  # our checkpoints and timm's training checkpoints
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--student-init {path} holds no state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _as_ours(state: dict[str, torch.Tensor], model: nn.Module, path: Path, name: str) -> dict[str, torch.Tensor]:
    """The file's keys renamed to the model's, from whichever naming fits them best."""
    ours = set(model.state_dict())
    mapping = getattr(model, "torchvision_keys", {})
    if len(set(state) & set(mapping)) > len(set(state) & ours):  # torchvision naming
        unknown = sorted(set(state) - set(mapping))
        state = {mapping[k]: v for k, v in state.items() if k in mapping}
    else:
        unknown = sorted(set(state) - ours)
    missing = sorted(ours - set(state))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} of its keys are not in the architecture (e.g. {unknown[0]!r})")
        if missing:
            # name the missing key as torchvision does, when the student has torchvision names
            as_torchvision = {ours_key: tv_key for tv_key, ours_key in mapping.items()}
            parts.append(f"{len(missing)} of the student's are missing (e.g. "
                         f"{as_torchvision.get(missing[0], missing[0])!r})")
        raise CheckpointError(f"--student-init {path} does not fit student {name}: {'; '.join(parts)}")
    return state


def init_student(model: nn.Module, path, name: str) -> nn.Module:
    """Load the file's weights into `model` (a registry or factory student), in place."""
    path = Path(path)
    state = _as_ours(read_state_dict(path), model, path, name)
    own = model.state_dict()
    head = [k for k in own if k.startswith(HEAD_PREFIX)]
    if head and any(state[k].shape != own[k].shape for k in head):
        classes, file_classes = own[f"{HEAD_PREFIX}weight"].shape[0], state[f"{HEAD_PREFIX}weight"].shape[0]
        if (str(path.resolve()), classes) not in _told:
            _told.add((str(path.resolve()), classes))
            console.print(f"student init: {path.name} has a {file_classes}-class head and the data has {classes} "
                          "classes: the head is replaced (newly initialised), the rest is loaded")
        state.update({k: own[k] for k in head})
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"--student-init {path} does not fit student {name}: {k} has shape "
                                  f"{tuple(v.shape)}, the student's is {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return model
