"""Bring-your-own teachers and students.

Teacher (config teacher.path, `--teacher`):
  * a torch.export program (.pt2): loads without the user's code;
  * "package.module:factory" (+ teacher.weights, a state_dict .pt or .safetensors file);
  * our own checkpoint (.pt), handled by nets/model_io.load_teacher.
External teachers get their inputs by modality name (``net(image=..., audio=...)``) and
return logits, (features, logits) or {"logits": ..., "features": ...}. ExternalTeacher
adapts them to FusionTeacher's ``forward_features(inputs, drop) -> (features, logits)``;
a teacher without features yields (B, 0) features, and feature distillation refuses it.

Student (config student.name): a registry name, or "package.module:factory", called with
the keyword arguments it accepts among num_classes and in_channels.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from distill_export.errors import CheckpointError, ConfigError
from distill_export.nets.checkpoint import load_failure

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_factory(spec) -> bool:
    s = str(spec)
    return bool(_FACTORY.match(s)) and not Path(s).exists()


def is_export_program(path) -> bool:
    """A .pt2 name, or a zip archive laid out as torch.export.save writes it."""
    p = Path(str(path))
    if p.suffix == ".pt2":
        return True
    if not p.is_file():  # a FIFO blocks and /dev/zero never ends (tenth audit B6): the loader names them
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return any(n.endswith("/archive_format") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_external_teacher(spec) -> bool:
    return is_factory(spec) or is_export_program(spec)


def import_factory(spec: str, what: str):
    module, _, attr = str(spec).partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"{what} {spec!r}: cannot import module {module!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {spec!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return obj


def call_factory(fn, spec: str, what: str, **available) -> nn.Module:
    """Call fn with the keyword arguments it accepts; it must return an nn.Module."""
    try:
        params = inspect.signature(fn).parameters
    except (ValueError, TypeError) as exc:  # a builtin or extension type (48th audit S1: builtins:dict)
        raise ConfigError(f"{what} {spec}: its signature cannot be read ({type(exc).__name__}: {str(exc)[:120]}), so "
                          f"which of {', '.join(available)} it takes is unknown; wrap it in a Python function") from None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = available
    else:
        kwargs = {k: v for k, v in available.items() if k in params}
    try:
        net = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{what} {spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                          f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{what} {spec} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def load_weights(net: nn.Module, path) -> nn.Module:
    """A state_dict from .safetensors, a torch.save'd dict, or one of our checkpoints."""
    from distill_export.nets.checkpoint import load_state

    path = Path(path)
    from distill_export.nets.checkpoint import read_state_file

    state = read_state_file(path, f"teacher weights {path}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    return load_state(net, state, path)


# ----- teachers ------------------------------------------------------------------------------
def split_outputs(out, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """logits | (features, logits) | {"logits", "features"?} -> (features or (B, 0), logits)."""
    feats = None
    if isinstance(out, dict):
        logits, feats = out.get("logits"), out.get("features")
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        feats, logits = out
    else:
        logits = out
    if not isinstance(logits, torch.Tensor) or (feats is not None and not isinstance(feats, torch.Tensor)):
        raise CheckpointError(f"teacher {source} must return logits, (features, logits) or "
                              f"{{'logits', 'features'}}; it returned {type(out).__name__}")
    if feats is None:
        feats = logits.new_zeros(logits.shape[0], 0)
    return feats.flatten(1), logits


class ExternalTeacher(nn.Module):
    """Adapts a user's teacher to forward_features(inputs: dict, drop) -> (features, logits).

    `drop` zeroes the named modalities' *inputs* (an external teacher has no embeddings
    we can reach), the closest analogue of FusionTeacher's embedding drop.
    """

    def __init__(self, net: nn.Module, input_names: list[str], source: str, positional: bool = False,
                 exported: bool = False, input_shapes: dict[str, tuple] | None = None):
        super().__init__()
        self.net = net
        self.modality_names = list(input_names)
        self.source = source
        self.positional = positional
        self.exported = exported
        self.input_shapes = input_shapes or {}  # per sample; None marks a dynamic dim
        self.max_call_s: float | None = None  # a .pt2's per-call limit (nets/pt2_bounds.py), set by its loader
        self.has_features: bool | None = None  # known after the first forward
        self.feature_dim = 0

    def train(self, mode: bool = True):
        self.training = mode
        if not self.exported:  # an exported program's module refuses train()/eval()
            self.net.train(mode)
        return self

    def forward_features(self, inputs: dict[str, torch.Tensor], drop: tuple[str, ...] = ()):
        args = {m: torch.zeros_like(inputs[m]) if m in drop else inputs[m] for m in self.modality_names}
        with self._bounded():
            out = self.net(*args.values()) if self.positional else self.net(**args)
        feats, logits = split_outputs(out, self.source)
        self.has_features = feats.shape[1] > 0
        self.feature_dim = int(feats.shape[1])
        return feats, logits

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)[1]

    def _bounded(self):
        """A .pt2's call stops at max_call_s; a factory's code is the user's own and runs as it is.
        Not while torch.compile / torch.export trace this module (no signals inside a graph)."""
        if not self.exported or torch.compiler.is_compiling():
            return contextlib.nullcontext()
        from distill_export.nets.pt2_bounds import time_limit

        return time_limit(self.max_call_s, self.source)


def load_export_program(path, max_call_s: float | None = None) -> ExternalTeacher:
    """max_call_s: each call's limit (validate.max_call_s / profile.max_call_s); None: the default."""
    import logging

    from distill_export.nets.pt2_bounds import DEFAULT_MAX_CALL_S

    from distill_export.files import check_model_file

    path = check_model_file(Path(str(path)), f"teacher program {path}", CheckpointError)
    from distill_export.nets.pt2_safety import check_pt2_archive, weights_only_loads

    check_pt2_archive(path)  # torch.export.load unpickles with weights_only=False: refuse such entries first
    # torch logs the cause as a warning, then raises "check the warnings above": we keep the cause
    # for our one line and print nothing of torch's (twenty-third audit B3).
    quiet, said = logging.getLogger("torch.export"), []
    saved = quiet.level, quiet.propagate, quiet.handlers
    keep = logging.Handler(logging.WARNING)
    keep.emit = lambda record: said.append(str(record.exc_info[1]) if record.exc_info else record.getMessage())
    quiet.setLevel(logging.WARNING)
    quiet.propagate, quiet.handlers = False, [keep]
    try:
        with weights_only_loads():
            ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        cause = next((line.strip() for text in said for line in text.splitlines() if line.strip()), "")
        raise CheckpointError(f"{path} is not a torch.export program (.pt2): "
                              f"{cause[:300] if cause else load_failure(exc)}") from None
    finally:
        quiet.setLevel(saved[0])
        quiet.propagate, quiet.handlers = saved[1], saved[2]
    from distill_export.nets.pt2_graph import check_program_graph

    check_program_graph(ep, path)  # loading runs no node; refuse file, I/O or in-place-input operators before any does
    names = list(ep.graph_signature.user_inputs)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    shapes, ranges, exprs, dtypes = {}, {}, {}, {}
    for name in names:
        val = placeholders[name].meta.get("val") if name in placeholders else None
        if val is not None and hasattr(val, "shape"):
            shapes[name], dtypes[name] = tuple(int(d) if isinstance(d, int) else None for d in val.shape[1:]), val.dtype
            fixed = (val.shape[0],) * 2 if val.shape and isinstance(val.shape[0], int) else None  # its own range (guards are off: 58th B13)
            ranges[name] = (fixed or _dim_range(ep, val.shape[0]), *(_dim_range(ep, d) for d in val.shape[1:]))  # batch first
            exprs[name] = tuple(None if isinstance(d, int) else getattr(getattr(d, "node", None), "expr", None)
                                for d in val.shape)
    in_spec = ep.module_call_graph[0].signature.in_spec if ep.module_call_graph[0].signature else None
    positional = False
    children = list(in_spec.children()) if in_spec is not None else []
    if len(children) == 2:  # (args, kwargs)
        positional = children[0].num_children > 0 and not children[1].context
    # guards off: a program exported from forward(**inputs) has guards that cannot be evaluated after
    # loading; check_teacher compares every static input dim with the data before the first call
    try:
        module = ep.module(check_guards=False)
    except TypeError:  # an older torch without the switch
        module = ep.module()
    teacher = ExternalTeacher(module, names, str(path), positional=positional, exported=True, input_shapes=shapes)
    teacher.max_call_s = DEFAULT_MAX_CALL_S if max_call_s is None else float(max_call_s)
    teacher.input_ranges = ranges  # the dynamic dims' (min, max): guards are off, so profile checks a shape it feeds
    teacher.input_exprs = exprs  # each dim's sympy expression: s0, or 2*s1 for a dim derived from another
    teacher.input_dtypes = dtypes  # profile feeds each input its own dtype (an int64 one was fed floats: 59th B7)
    return teacher


def _dim_range(ep, dim) -> tuple[int, int | None] | None:
    """A dynamic dim's (min, max or None when unbounded) from the program's range constraints
    (None: static or unknown)."""
    if isinstance(dim, int):
        return None
    try:
        bounds = ep.range_constraints[dim.node.expr]
        low = int(bounds.lower)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    try:  # torch's int_oo says is_finite and cannot be an int (twenty-eighth audit B2)
        high = int(bounds.upper)
    except Exception:  # noqa: BLE001 - int_oo: TypeError, OverflowError or sympy's AttributeError by version
        high = None
    return low, high


def load_factory_teacher(spec: str, weights=None, data=None) -> ExternalTeacher:
    fn = import_factory(spec, "teacher factory")
    available = {}
    if data is not None:
        available = {"num_classes": data.num_outputs, "modalities": {m: s.shape for m, s in data.modalities.items()}}
    net = call_factory(fn, spec, "teacher factory", **available)
    if weights:
        load_weights(net, weights)
    params = inspect.signature(net.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names = sorted(data.modalities) if data is not None else []
    else:
        names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and (p.default is p.empty or (data is not None and n in data.modalities))]
    return ExternalTeacher(net.eval(), names, spec)


def load_external_teacher(spec, data=None, weights=None, max_call_s: float | None = None) -> ExternalTeacher:
    teacher = (load_factory_teacher(str(spec), weights, data) if is_factory(spec)
               else load_export_program(spec, max_call_s))
    if data is not None:
        check_teacher(teacher, data)
    return teacher.eval()


def check_teacher(teacher: ExternalTeacher, data) -> None:
    """Inputs the data has, per-sample shapes that match, and one logit per class."""
    src = teacher.source
    missing = [m for m in teacher.modality_names if m not in data.modalities]
    if missing:
        raise CheckpointError(f"teacher {src} takes inputs {teacher.modality_names}; the data has no "
                              f"{', '.join(missing)} (modalities: {', '.join(sorted(data.modalities))})")
    for m, shape in teacher.input_shapes.items():
        have = tuple(data.modalities[m].shape)
        if len(shape) != len(have) or any(s is not None and s != h for s, h in zip(shape, have)):
            want = tuple("*" if s is None else s for s in shape)
            raise CheckpointError(f"teacher {src} expects {m} of shape {want} per sample; the data gives {have}")
    # Two batch sizes: a program exported with a static batch passes one and fails the other (or
    # later, on the trainer's batches, with a traceback); the message then says how to fix it.
    for n in (2, 3):
        batch = {m: data.train.inputs[m][:n] for m in teacher.modality_names}
        try:
            with torch.no_grad():
                _, logits = teacher.forward_features(batch)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001
            shapes = ", ".join(f"{m} {tuple(v.shape)}" for m, v in batch.items())
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            hint = (" (it ran on a batch of 2: exported with a fixed batch size? re-export with a dynamic batch, "
                    "torch.export's dynamic_shapes)") if n == 3 else ""
            raise CheckpointError(f"teacher {src} fails on a batch of the data ({shapes}){hint}: {first[:200]}") from None
        # one row per sample, on each batch: a program that always returned 3 rows passed the check on
        # its class count, then was an IndexError in the metrics (thirty-eighth audit B1, B2)
        if logits.dtype not in (torch.float16, torch.float32, torch.float64):  # bool, int64 (39th A4), bfloat16
            # (40th B4: ONNX Runtime has no numpy type for it, so profile failed after four stages)
            raise CheckpointError(f"teacher {src} returns {str(logits.dtype).removeprefix('torch.')} outputs; a teacher "
                                  "returns float32, float16 or float64 scores, one per class")
        if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] != data.num_outputs:
            raise CheckpointError(f"teacher {src} returns logits of shape {tuple(logits.shape)} for {n} rows; it must "
                                  f"return ({n}, {data.num_outputs}): one score per class for each row (the data has "
                                  f"{data.num_outputs} classes: {', '.join(data.target_names[:12])})")
        if not bool(torch.isfinite(logits).all()):  # NaN logits would be cached
            raise CheckpointError(f"teacher {src}: its outputs are not finite (NaN or inf logits on the first rows of "
                                  "the training data); a teacher must give finite logits: check its weights or its export")


def teacher_identity(spec, weights=None) -> str:
    """Content hash of what the teacher computes: its archive's content, or factory + weights +
    module source. The same teacher saved twice (to two paths, at two times) hashes the same."""
    import hashlib

    from distill_export.files import sha256_file, torch_archive_hash

    h = hashlib.sha256()
    if is_factory(spec):
        h.update(str(spec).encode())
        module = importlib.import_module(str(spec).partition(":")[0])
        src = getattr(module, "__file__", None)
        if src and Path(src).is_file():
            h.update(sha256_file(src).encode())
    else:
        h.update(torch_archive_hash(spec).encode())
    if weights:
        h.update(torch_archive_hash(weights).encode())
    return h.hexdigest()


def export_teacher_program(teacher: nn.Module, example: dict[str, torch.Tensor], path) -> Path:
    """Save a FusionTeacher (or any forward_features(dict) model) as a .pt2 that takes its
    inputs by modality name, returns (features, logits), and has a dynamic batch dim."""
    names = sorted(example)

    class ByName(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **inputs):
            return self.inner.forward_features(inputs)

    # Name the inputs in the signature: export then records image=..., audio=... rather
    # than one **inputs (whose guards the loaded program cannot evaluate).
    P = inspect.Parameter
    ByName.forward.__signature__ = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)] + [P(m, P.POSITIONAL_OR_KEYWORD) for m in names])

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(ByName(teacher.eval()), (), {m: example[m] for m in names},
                             dynamic_shapes={m: {0: batch} for m in names})
    path = Path(path)
    torch.export.save(ep, str(path))
    return path


# ----- students ------------------------------------------------------------------------------
class FactoryStudent(nn.Module):
    """A user's student: forward(x) -> logits; forward_features from the net if it has one,
    else (B, 0) features (feature distillation then refuses it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.feature_dim = int(getattr(net, "feature_dim", 0) or 0) if hasattr(net, "forward_features") else 0

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.net, "forward_features"):
            feats, logits = self.net.forward_features(x)
            return feats, logits
        logits = self.net(x)
        return logits.new_zeros(logits.shape[0], 0), logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_factory_student(spec: str, num_classes: int, in_channels: int = 1) -> FactoryStudent:
    fn = import_factory(spec, "student factory")
    net = call_factory(fn, spec, "student factory", num_classes=num_classes, in_channels=in_channels)
    from torch.nn.parameter import is_lazy

    lazy = next((name for name, p in [*net.named_parameters(), *net.named_buffers()] if is_lazy(p)), None)
    if lazy:  # its shape comes from the first batch: the checkpoint key and the optimiser need it (48th S3, 49th S1)
        raise ConfigError(f"student factory {spec} has a lazy parameter or buffer ({lazy}, e.g. nn.LazyLinear) whose "
                          "shape is set by the first batch, but training needs every shape up front; give the layer "
                          "its sizes")
    return FactoryStudent(net)
