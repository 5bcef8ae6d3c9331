"""--student-init: a student's initial weights from a local file.

Accepted: one of our student checkpoints, a state_dict saved by torch.save (loaded with
weights_only=True) or a .safetensors file, named
- as our SplitNet names its tensors (backbone.*, head.*);
- as torchvision names them (features.*, classifier.*, conv1.*, fc.*), which timm's resnets
  share (timm's resnet18 loads into resnet18);
- as timm names its MobileNetV3 (conv_stem.*, blocks.*, conv_head.*, classifier.*): timm's
  mobilenetv3_small_100 loads into mobilenet_v3_small, paired with our tensors by
  architecture order (see _from_timm), its BatchNorm eps (1e-5, ours 1e-3) folded into the BN
  weights. timm's tf_mobilenetv3_small_100 has the same names and shapes but TF "same" padding
  and eps 1e-3: not supported, and not recognisable from the file. shufflenet_v2 has no timm
  counterpart (torchvision-named files only).
A wrapper dict ({"state_dict": ...}, {"model": ...}) and a DDP "module." prefix are unwrapped.
When the file's head has another class count (ImageNet's 1000 against the data's 10), the head
keeps its fresh initialisation and a log line says so; any other key or shape that does not
match the architecture is a one-line CheckpointError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from distill_export.errors import CheckpointError

HEAD_PREFIX = "head."
# Registry students with a timm counterpart under other names, and the BatchNorm eps timm's
# model uses (not in a state_dict): mobilenetv3_small_100 normalises with 1e-5, torchvision's
# MobileNetV3 (ours) with 1e-3.
TIMM_BN_EPS = {"mobilenet_v3_small": 1e-5}
_told: set[tuple[str, int]] = set()  # (file, classes) whose head replacement was logged: the
# student, its baseline and the preflight check all start from the same file; one line says it
console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(the file's state_dict, the class names its head declares: our checkpoints' meta.class_names, else None)."""
    from distill_export.nets.checkpoint import check_state_dict, read_state_file

    from distill_export.nets.checkpoint import FORMAT

    state = read_state_file(path, f"--student-init {path}")
    if isinstance(state, dict) and state.get("format") == FORMAT and state.get("kind") not in (None, "student"):
        # 71st audit A1: a run's teacher.pt was "64 of its keys are not in the architecture"
        raise CheckpointError(f"--student-init {path} is a distill-export {state['kind']} checkpoint, not a "
                              "student's weights: give a run's student.pt (or baseline.pt) or a state_dict")
    meta = state.get("meta") if isinstance(state, dict) else None
    declared = meta.get("class_names") if isinstance(meta, dict) else None
    for wrapper in ("state_dict", "model"):  # our checkpoints and timm's training checkpoints
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--student-init {path} holds no state_dict (a dict of tensors)")
    check_state_dict(state, f"--student-init {path}")  # string keys, finite values
    check_running_vars(state, path)
    return {k.removeprefix("module."): v for k, v in state.items()}, declared


def check_running_vars(state: dict[str, torch.Tensor], path: Path) -> None:
    """A BatchNorm running variance is never negative (twenty-first audit B3): in eval mode the
    layer divides by sqrt(var + eps), so a negative entry makes every output NaN, while training
    (batch statistics) goes on and the NaN student was scored and exported. Checked on the file's
    own names (ours, torchvision's, timm's all end in running_var), before timm's eps is folded."""
    for key, value in state.items():
        if key.endswith("running_var") and value.is_floating_point() and bool((value < 0).any()):
            bad = int((value < 0).sum())
            raise CheckpointError(f"--student-init {path}: tensor {key[:80]!r} holds {bad} negative value"
                                  f"{'s' * (bad > 1)} (of {value.numel()}); a BatchNorm running variance is never "
                                  "negative (the outputs of the student would be NaN), refused")


def _check_head(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """The file's head is one Linear layer that reads the backbone the file also holds: head.bias
    has one entry per row of head.weight, and head.weight the student's input features. Only its
    class count may differ (the head is then replaced). Twenty-first audit B4: a (3, 32) weight with
    a (4,) bias was "a 3-class head for 3 classes: replaced", a line that contradicts itself."""
    weight, mine = state.get(f"{HEAD_PREFIX}weight"), own.get(f"{HEAD_PREFIX}weight")
    if weight is None or mine is None:
        return  # a head named otherwise (a factory student's): the key-by-key shape check below
    fits = f"--student-init {path} does not fit student {name}"
    if weight.dim() != mine.dim() or weight.shape[1:] != mine.shape[1:]:
        raise CheckpointError(f"{fits}: {HEAD_PREFIX}weight has shape {tuple(weight.shape)}, the student's is "
                              f"{tuple(mine.shape)} (only a head's class count, its first dimension, may differ)")
    bias = state.get(f"{HEAD_PREFIX}bias")
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:1]):
        raise CheckpointError(f"{fits}: its head is inconsistent: {HEAD_PREFIX}bias has shape {tuple(bias.shape)} "
                              f"and {HEAD_PREFIX}weight {tuple(weight.shape)} has {weight.shape[0]} rows (one bias "
                              "per class)")


def _tell(path: Path, classes: int, line: str) -> None:
    """Say it once per file and class count (the student, its baseline and preflight all load it)."""
    if (str(path.resolve()), classes) not in _told:
        _told.add((str(path.resolve()), classes))
        console.print(line)


def _as_ours(state: dict[str, torch.Tensor], model: nn.Module, path: Path, name: str) -> dict[str, torch.Tensor]:
    """The file's keys renamed to the model's, from whichever naming fits them best."""
    ours = set(model.state_dict())
    mapping = getattr(model, "torchvision_keys", {})
    if name in TIMM_BN_EPS and "conv_stem.weight" in state and not set(state) & (ours | set(mapping)):
        return _from_timm(state, model, path, name)
    if len(set(state) & set(mapping)) > len(set(state) & ours):  # torchvision naming
        # A detector uses a torchvision backbone without its classifier (init_ignore) and
        # adds a neck and heads no such file has (init_fresh): those stay as initialised.
        ignore = tuple(getattr(model, "init_ignore", ()))
        unknown = sorted(k for k in set(state) - set(mapping) if not (ignore and k.startswith(ignore)))
        state = {mapping[k]: v for k, v in state.items() if k in mapping}
        fresh = tuple(getattr(model, "init_fresh", ()))
        ours = {k for k in ours if not (fresh and k.startswith(fresh))}
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


# timm's MobileNetV3 tensor names, ranked in the order timm's modules register them
# (timm/models/mobilenetv3.py, _efficientnet_blocks.py). The rank, not the file's order, is
# what counts: a .safetensors file comes back sorted by name.
_TIMM_TOP = ("conv_stem", "bn1", "blocks", "conv_head", "classifier")
_TIMM_BLOCKS = {  # a block's kind is the first of these keys among its modules
    "conv_pwl": ("conv_pw", "bn1", "conv_dw", "bn2", "se.conv_reduce", "se.conv_expand", "conv_pwl", "bn3"),
    "conv_dw": ("conv_dw", "bn1", "se.conv_reduce", "se.conv_expand", "conv_pw", "bn2"),  # no expansion
    "conv": ("conv", "bn1"),  # the final 1x1 conv (ConvBnAct)
}
_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")  # params, then buffers


def _timm_order(state: dict[str, torch.Tensor], fail) -> list[str]:
    """The file's keys in timm's registration order; a name timm's MobileNetV3 does not use fails."""
    block_modules: dict[tuple[str, str], set[str]] = {}
    for key in state:
        parts = key.rpartition(".")[0].split(".")
        if parts[0] == "blocks" and len(parts) > 3:
            block_modules.setdefault((parts[1], parts[2]), set()).add(".".join(parts[3:]))

    def rank(key: str) -> tuple[int, ...]:
        module, _, tensor = key.rpartition(".")
        top, *rest = module.split(".")
        try:
            if top == "blocks" and len(rest) >= 3:  # blocks.stage.block.module
                stage, block, inner = rest[0], rest[1], ".".join(rest[2:])
                kind = next(k for k in _TIMM_BLOCKS if k in block_modules[stage, block])
                where = (int(stage), int(block), _TIMM_BLOCKS[kind].index(inner))
            elif not rest and top != "blocks":  # conv_stem, bn1, conv_head, classifier
                where = (0, 0, 0)
            else:
                raise ValueError(key)
            return (_TIMM_TOP.index(top), *where, _TENSORS.index(tensor))
        except (ValueError, KeyError, StopIteration):
            fail(f"{key!r} is not a tensor name of timm's MobileNetV3")

    return sorted(state, key=rank)


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module, path: Path, name: str) -> dict[str, torch.Tensor]:
    """timm's MobileNetV3 tensors renamed to ours by architecture order.

    Both networks register their modules in forward order and a state_dict lists each
    module's tensors in that order (weight, bias, running_mean, running_var,
    num_batches_tracked): the stem conv and BN; per inverted-residual block the 1x1 expand
    conv and BN (absent in the first block), the depthwise conv and BN, the squeeze-excite
    reduce and expand convs (where the block has them), the 1x1 project conv and BN; the final 1x1 conv and BN; the
    576->1024 head layer; the classifier. torchvision nests them as features.i.block.j, timm as
    blocks.stage.block.name; only the order is common, so the two lists are paired in order, and
    each pair must agree on the tensor's kind (weight, bias, running_var...) and its shape
    (the classifier's may differ: init_student replaces a head of another class count).
    Anything that does not line up is a one-line error, never a guess.
    """
    def fail(why: str):
        raise CheckpointError(f"--student-init {path} does not fit student {name}: {why}")

    own = model.state_dict()  # ours: backbone.0 (torchvision's features) ... head, in forward order
    theirs = _timm_order(state, fail)
    out: dict[str, torch.Tensor] = {}
    for key, ours in zip(theirs, own):
        value = state[key]
        if value.dim() == 4 and own[ours].dim() == 2 and value.shape[2:] == (1, 1):
            # timm's conv_head is a 1x1 Conv2d on the pooled (B, 576, 1, 1) map, ours a Linear on
            # (B, 576): the same weights, (1024, 576, 1, 1) -> (1024, 576)
            value = value.flatten(1)
        same_kind = key.rpartition(".")[2] == ours.rpartition(".")[2]
        if not same_kind or (value.shape != own[ours].shape and not ours.startswith(HEAD_PREFIX)):
            fail(f"in architecture order its {key!r} {tuple(state[key].shape)} meets the student's "
                 f"{ours!r} {tuple(own[ours].shape)}")
        out[ours] = value
    if len(theirs) != len(own):
        fail(f"it has {len(theirs)} tensors in timm's MobileNetV3 names, the student {len(own)}")
    _fold_bn_eps(out, model, TIMM_BN_EPS[name])
    return out


def _fold_bn_eps(state: dict[str, torch.Tensor], model: nn.Module, file_eps: float) -> None:
    """Make our BatchNorms (eps 1e-3) compute what the file's (eps 1e-5) compute. In eval mode a
    BN is (x - mean) / sqrt(var + eps) * weight + bias, per channel, so weight *
    sqrt(var + ours) / sqrt(var + file_eps) gives the same output exactly; in training, with
    batch statistics near the running ones, nearly the same. Channels of running var << 1e-3
    differ most (up to 10x): left as they were, timm's outputs would not be reproduced."""
    for prefix, bn in model.named_modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.eps != file_eps:
            weight, var = state[f"{prefix}.weight"], state[f"{prefix}.running_var"].double()
            state[f"{prefix}.weight"] = (weight.double() * ((var + bn.eps) / (var + file_eps)).sqrt()).to(weight.dtype)


def init_student(model: nn.Module, path, name: str, class_names=None) -> nn.Module:
    """Load the file's weights into `model` (a registry or factory student), in place.
    class_names: the data's, in the head's order; a head declared for other classes is replaced."""
    from distill_export.nets.checkpoint import check_cast_fits
    from distill_export.nets.checkpoint import class_order_mismatch

    path = Path(path)
    raw, declared = read_state_dict(path)
    state = _as_ours(raw, model, path, name)
    own = model.state_dict()
    head = [k for k in own if k.startswith(HEAD_PREFIX)]
    _check_head(state, own, path, name)
    note = None
    if head and any(state[k].shape != own[k].shape for k in head):
        classes, file_classes = own[f"{HEAD_PREFIX}weight"].shape[0], state[f"{HEAD_PREFIX}weight"].shape[0]
        note = (classes, f"student init: {path.name} has a {file_classes}-class head and the data has {classes} "
                         "classes: the head is replaced (newly initialised), the rest is loaded")
    elif head and class_names is not None and (why := class_order_mismatch(declared, class_names)):
        # fourteenth audit B3: the same count of other classes (another label order) was loaded as is
        note = (len(class_names), f"student init: {path.name}'s head is for other classes ({why}): the head is "
                                  "replaced (newly initialised), the rest is loaded")
    if note is not None:
        state.update({k: own[k] for k in head})
    file_keys = {id(v): k for k, v in raw.items()}  # a renamed tensor is the same object: name the file's key
    for k, v in state.items():  # before the note: "the rest is loaded" was said, then refused (70th A2)
        if v.shape != own[k].shape:
            theirs = file_keys.get(id(v), k)
            named = k if theirs == k else f"{theirs} (the student's {k})"
            raise CheckpointError(f"--student-init {path} does not fit student {name}: {named} has shape "
                                  f"{tuple(v.shape)}, the student's is {tuple(own[k].shape)}")
    check_cast_fits(state, own, f"--student-init {path}", {k: file_keys.get(id(v), k) for k, v in state.items()})
    if note is not None:
        _tell(path, *note)
    model.load_state_dict({**own, **state})  # own: a detector's neck and heads (init_fresh), unchanged
    return model
