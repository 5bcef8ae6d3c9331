"""Are two checkpoints the same model? Compares every tensor bit for bit, and the metadata.

    python tools/same_weights.py runs/a/student.pt runs/b/student.pt

Checkpoints saved by path (before files.torch_save) carry their temporary file's name inside
the zip archive, so two identical trainings gave files with different bytes; new ones are
bit-identical. This compares what was saved, not the archive, so it works for both. Exit 0 when identical, 1 otherwise (the differing keys listed).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import torch

from distill_export.errors import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, one_line_errors  # noqa: E402


def differences(a, b, where: str = "") -> list[str]:
    """What differs between two loaded checkpoints: mappings key by key, lists and tuples item by
    item (a checkpoint may be a bare list of tensors: ninth audit SW3), tensors bit for bit."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            at = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                out.append(f"{at}: only in {'first' if key in a else 'second'}")
            else:
                out += differences(a[key], b[key], at)
        return out
    at = where or "(the file itself)"
    if any(isinstance(x, (dict, list, tuple)) for x in (a, b)) and type(a) is not type(b):
        return [f"{at}: a {type(a).__name__} != a {type(b).__name__}"]  # not the whole contents printed
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{at}: {len(a)} items != {len(b)} items"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return [] if same_bits(a, b) else [f"{at}: tensors differ"]
    return [] if same_value(a, b) else [f"{at}: {a!r} != {b!r}"]


def same_value(a, b) -> bool:
    """Plain values bit for bit too: of one type (1, 1.0 and True load differently: tenth audit
    B9), and a float by its bytes (NaN is itself, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    return struct.pack("<d", a) == struct.pack("<d", b) if isinstance(a, float) else a == b


def same_bits(a, b) -> bool:
    """Two tensors of one dtype and shape holding the same bytes: a NaN equals itself here, as it
    does on disk (torch.equal compares values, and NaN != NaN made a file differ from itself: SW5)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _load(path: str):
    """A tensor file read as data (weights_only), through the product's checks: a regular file,
    and a failure said in its own words (load_failure) instead of torch's unsafe-loading advice."""
    from distill_export.files import check_model_file
    from distill_export.nets.checkpoint import load_failure, quiet_load

    check_model_file(path, path, CheckpointError)
    if Path(path).suffix == ".pt2":  # torch's words were "the checkpoint file is corrupted" (twenty-fifth audit A2)
        raise CheckpointError(f"{path} is a torch.export program (.pt2), not a checkpoint: this tool compares "
                              ".pt files (e.g. RUN/student.pt, RUN/teacher.pt)")
    try:
        loaded = quiet_load(path)  # torch's pickle-protocol warning printed 2 lines before ours (60th audit B1)
    except Exception as exc:  # noqa: BLE001 - corrupt zip, pickle with code, truncated file
        raise CheckpointError(f"{path} is not a readable tensor file: {load_failure(exc)}") from None
    _check_tensors(loaded, path)
    return loaded


def _check_tensors(value, path: str, key: str = "") -> None:
    """Every tensor is one same_bits can compare: dense, with values, of a loadable dtype (the
    product's own check; a meta tensor made torch.equal raise NotImplementedError, eighth audit SW1)."""
    from distill_export.nets.checkpoint import check_weight_kind

    if isinstance(value, torch.Tensor):
        check_weight_kind(value, key or "(the file itself)", path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tensors(v, path, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_tensors(v, path, f"{key}[{i}]")


@one_line_errors
def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    try:
        a, b = (_load(p) for p in (args.first, args.second))
    except CheckpointError as exc:  # one line, never torch's "weights_only=False" advice
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unwrapped = _one_container(a, b)
    if unwrapped is not None:  # 64th audit T2: a .pt checkpoint beside its bare state_dict (e.g. safetensors)
        a, b, note = unwrapped
    diff = differences(a, b)
    for line in diff:
        print(line)
    if unwrapped is not None:
        print(note)
        print("same weights, other containers" if not diff else f"{len(diff)} differences in the weights")
        return 1  # the files do not hold the same things: the exit says so, the line says what is the same
    print("identical" if not diff else f"{len(diff)} differences")
    return 0 if not diff else 1


def _is_bare_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _one_container(a, b):
    """When one file is the product's checkpoint ({"state_dict": ..., "arch": ..., "meta": ...})
    and the other a bare name-to-tensor mapping, their weights compared, not their containers:
    key-by-key, every tensor was "only in" one of them. None when both are of one kind."""
    wrapped = [isinstance(x, dict) and _is_bare_state_dict(x.get("state_dict")) for x in (a, b)]
    bare = [_is_bare_state_dict(x) for x in (a, b)]
    if not ((wrapped[0] and bare[1]) or (bare[0] and wrapped[1])):
        return None
    which, checkpoint = ("first", a) if wrapped[0] else ("second", b)
    extra = sorted(str(k) for k in checkpoint if k != "state_dict")
    note = (f"the {which} is a checkpoint and the other a bare state_dict: compared their weights; "
            f"only the {which} holds {', '.join(extra) or 'no other keys'}")
    return (a["state_dict"] if wrapped[0] else a), (b["state_dict"] if wrapped[1] else b), note


if __name__ == "__main__":
    sys.exit(main())
