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

_UNSAFE_HINT = "weights_only"  # torch's advice to load with weights_only=False: it would run the file's code


def load_failure(exc: BaseException) -> str:
    """One line saying why torch.load (weights only) refused a file, without torch's advice to
    retry with weights_only=False (that would run whatever code the file holds): the refused
    pickle operation or global, or the error's first line."""
    import re

    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], int):  # pickle's opcode table: KeyError(105)
        # for a text file (thirtieth audit A2); a zip's missing member is a KeyError of its name
        return "its bytes are neither a PyTorch zip archive nor a pickle"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's bold face (ANSI escapes)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    unsafe = ("weights only load failed", "two options", "trust the source", "weights_only", "safe_globals")
    if not any(u in text.lower() for u in unsafe):
        return lines[0][:200]
    # torch's text around <why> offers to load unsafely or allow-list globals: keep only <why>, in our words
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    if glob:
        detail = f"it holds a {glob.group(1)} object, which is not a tensor"
    else:
        why = [ln for ln in lines[1:] if not any(u in ln.lower() for u in unsafe)
               and not ln.startswith(("Check the documentation", "Please file an issue", "(1)", "(2)"))]
        detail = why[0] if why else "it holds something other than tensors and plain containers"
    return f"not a plain tensor file ({detail[:160]}); distill-export never unpickles code"

FORMAT = "distill-export/1"


def quiet_load(path) -> Any:
    """torch.load, weights only, without torch's warnings: a plain pickle file made it print
    "Detected pickle protocol 4 ... please file an issue" and its source line before our one
    refusal line (fifth audit SI_pickle/PK2). What is wrong with a file is said by the error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


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
    from distill_export.files import check_model_file

    path = check_model_file(path, f"checkpoint {path}", CheckpointError)
    try:
        payload = quiet_load(path)
    except Exception as exc:  # corrupt zip, pickle with code, truncated file...
        other = other_format(path)
        raise CheckpointError(f"{path} is {other}, not a distill-export checkpoint" if other else
                              f"{path} is not a readable checkpoint: {load_failure(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a distill-export checkpoint (no '{FORMAT}' format tag)")
    if kind and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r}, expected a {kind!r}")
    return payload


def check_state_dict(state, what: str) -> None:
    """A state_dict is data the model will compute with: a dict of tensor names (strings) to
    tensors, every floating value finite. Anything else is a one-line CheckpointError naming
    the file (`what`) and the first bad key: a NaN or inf weight would train to NaN, and be
    saved and exported as if trained."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} holds no state_dict (a dict of tensors)")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{what}: a state_dict key of type {type(key).__name__} ({repr(key)[:40]}) is not a "
                                  "tensor name (a string)")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: {key[:80]!r} is a {type(value).__name__}, not a tensor")
        check_weight_kind(value, key, what)
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{what}: tensor {key[:80]!r} holds {bad} NaN or infinite value{'s' * (bad > 1)} "
                                  f"(of {value.numel()}); a diverged training or a damaged file, refused")


# The dtypes a weight file may hold (seventh audit W_si_f4): the ones torch computes in on CPU and
# the later checks understand. Anything else (float8, float4_e2m1fn_x2, uint16..uint64, complex32,
# quantized qint8, bits8 ...) has no isfinite or copy_ kernel, or is a storage format, not weights.
WEIGHT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
                           torch.complex128, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                           torch.bool})


def check_weight_kind(value: torch.Tensor, key: str, what: str) -> None:
    """A weight is a dense tensor with values, of a dtype the model computes in (sixth audit SI_f8,
    SI_sparse; seventh W_si_f4, W_si_meta). A sparse one (COO, CSR, ...) cannot be copied into a
    dense parameter: load_state_dict raised a traceback. A meta one has a shape and no data: "Cannot
    copy out of meta tensor". A float8 or float4 one is a storage format of a quantized export, not
    trained weights: torch has no isfinite for it (a traceback), and taking it as float32 would pass
    the quantization off as the model. Complex, integer and bool tensors pass here: check_cast_fits
    says which weight they cannot be."""
    name = f"{what}: tensor {key[:80]!r}"
    if value.layout != torch.strided:
        layout = str(value.layout).removeprefix("torch.")
        raise CheckpointError(f"{name} is a sparse tensor (layout {layout}); a weight must be "
                              "dense: save it with tensor.to_dense(), refused")
    if value.device.type == "meta":
        raise CheckpointError(f"{name} is on the meta device: it holds no values (a shape only, as a model built "
                              "on the meta device saves it); save the trained weights, refused")
    dtype = str(value.dtype).removeprefix("torch.")
    if value.dtype in WEIGHT_DTYPES:
        return
    if dtype.startswith(("float8", "float4")):
        bits = "an 8" if dtype.startswith("float8") else "a 4"
        raise CheckpointError(f"{name} is {dtype}, {bits}-bit storage format of quantized "
                              "weights: distill-export loads float32, float16, bfloat16 or float64 weights; save it "
                              "as one (tensor.float()) if that is what you mean, refused")
    raise CheckpointError(f"{name} is {dtype}, a dtype distill-export does not load weights from (it loads "
                          "float32, float16, bfloat16 or float64, and integer or bool buffers); save it as "
                          "one (tensor.float()) if that is what you mean, refused")


def check_cast_fits(state: dict, own: dict, what: str, names: dict | None = None) -> None:
    """Every floating tensor stays finite once load_state_dict casts it to the model's dtype
    (`own`: the model's state_dict): 1e300 is finite in float64 and inf in float32. `names` maps
    a key to the file's own name for it, for the message. A complex, integer or bool tensor for
    a floating weight is refused too (fifth audit SI_complex): the cast drops the imaginary part
    with torch's warning, or turns a mask or an index into a weight; an integer buffer
    (num_batches_tracked) takes integers."""
    for key, value in state.items():
        target = own.get(key)
        if (isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor) and target.is_floating_point()
                and not value.is_floating_point()):
            raise CheckpointError(
                f"{what}: tensor {str((names or {}).get(key, key))[:80]!r} is {str(value.dtype).removeprefix('torch.')}"
                f", the model's is {str(target.dtype).removeprefix('torch.')}: a weight must be a real floating "
                "tensor (a cast would " + ("drop its imaginary part" if value.is_complex() else "turn it into another number type")
                + "), refused")
        if not _cast_on_load(value, target):
            continue
        overflow = ~torch.isfinite(value.to(target.dtype))  # the values the model would hold
        if bool(overflow.any()):
            bad, dtype = int(overflow.sum()), str(target.dtype).removeprefix("torch.")
            largest = float(value[overflow].abs().max())
            raise CheckpointError(
                f"{what}: tensor {str((names or {}).get(key, key))[:80]!r} ({str(value.dtype).removeprefix('torch.')}) "
                f"holds {bad} value{'s' * (bad > 1)} that overflow{'s' * (bad == 1)} {dtype}, the model's dtype "
                f"(largest magnitude {largest:.3g}): it would load as inf, refused")


def _cast_on_load(value, target) -> bool:
    """A floating tensor with values that load_state_dict converts to another floating dtype."""
    return (isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor) and value.is_floating_point()
            and target.is_floating_point() and value.dtype != target.dtype and value.layout == torch.strided
            and value.device.type != "meta")


def load_state(model: nn.Module, state_dict: dict, path: str | Path) -> nn.Module:
    check_state_dict(state_dict, str(path))
    check_cast_fits(state_dict, model.state_dict(), str(path))  # finite in the file, inf in the model
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        # torch's first line is "Error(s) in loading state_dict for Net:"; the keys are on the next
        # ones (tenth audit B7: the message stopped at the colon), so they are joined into one line.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        what = "; ".join(lines[1:]) or lines[0] if lines else type(exc).__name__
        raise CheckpointError(f"{path} does not fit the {type(model).__name__} model: "
                              f"{what[:300]}{'...' if len(what) > 300 else ''}") from None
    return model


def read_state_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A bare state_dict from .safetensors or a torch.save'd file (weights_only: never unpickles
    code); `what` names the file in the one-line CheckpointError ("--student-init x.pt")."""
    from distill_export.files import check_model_file

    check_model_file(path, what, CheckpointError)  # a FIFO or device: named, never read
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return quiet_load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        if _is_export_program(path):  # was "failed locating file data.pkl ... likely corrupted" (38th B6)
            raise CheckpointError(f"{what} is a torch.export program (.pt2), not a state_dict: it takes weights (a "
                                  ".pt state_dict or .safetensors file); a .pt2 can be a --teacher") from None
        other = other_format(path)
        if other:  # 65th audit A2: an .npz was a C++ "enforce fail", an .onnx "never unpickles code"
            raise CheckpointError(f"{what} is {other}, not a state_dict: it takes a .pt state_dict or a "
                                  ".safetensors file") from None
        raise CheckpointError(f"{what} is not a readable state_dict: {load_failure(exc)}") from None


def other_format(path: Path) -> str | None:
    """What a file torch.load refused is, when its first bytes or name say: a NumPy array or
    archive, or an ONNX model. None otherwise (the load's own failure says why)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x93NUMPY"):
            return "a NumPy array (.npy)"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if names and all(n.endswith(".npy") for n in names):
                return "a NumPy archive (.npz)"
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return "an ONNX model" if Path(path).suffix.lower() == ".onnx" else None


def _is_export_program(path: Path) -> bool:
    """A zip whose archive_format member says pt2 (what torch.export.save writes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.split("/", 1)[-1] == "archive_format"), None)
            return member is not None and z.read(member).strip() == b"pt2"
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def class_order_mismatch(declared, names) -> str | None:
    """How a checkpoint's declared class names (its output columns, in order) differ from the
    data's; None when they agree or the file declares none (older checkpoints, .pt2, factories)."""
    if declared is None:
        return None
    if not isinstance(declared, list) or not all(isinstance(n, str) for n in declared):
        return f"its meta.class_names is a {type(declared).__name__}, not a list of class names"
    names = list(names)
    if declared == names:
        return None
    if len(declared) != len(names):
        return f"it declares {len(declared)} class names for the data's {len(names)} classes"
    i = next(i for i, (a, b) in enumerate(zip(declared, names)) if a != b)
    return f"its output column {i} is class {declared[i]!r}, the data's column {i} is class {names[i]!r}"
