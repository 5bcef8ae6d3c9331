"""Teacher-output cache: the teacher's (features, logits) on the non-augmented training set,
computed once and stored as safetensors, reused across epochs and runs.

The file (default <run dir>/teacher_outputs.safetensors, or distill.teacher_cache_dir to share
it between runs) carries its key in the safetensors metadata. The key has three parts, so a
miss can say what changed:

  teacher        content hash of the teacher (its .pt/.pt2 file, or factory + module source + weights)
  data           content hash of the training inputs the teacher sees, in row order
  preprocessing  the modality specs (shape, normalisation, kind), the data's preprocessing
                 settings and the teacher's view (distill.teacher_view)

The file stores only what the objective's terms need (``needs``: "logits", "features"); a
file that lacks a needed tensor is a miss. Labels are not part of the key: the teacher's outputs do not depend on them, so runs that
keep different label fractions share one cache. With augmentation on (distill.augment) the
cache is not used: the teacher runs on every augmented batch instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from distill_export.files import atomic_path

CACHE_FILE = "teacher_outputs.safetensors"
FORMAT = "distill-export/teacher-cache/1"
STATS_ROWS = 1024  # online mode: rows whose teacher features give the standardisation stats

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class CacheKey:
    teacher: str
    data: str
    preprocessing: str

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, **asdict(self)}


def inputs_fingerprint(inputs: dict[str, torch.Tensor], names) -> str:
    """sha256 over the named input tensors (dtype, shape and bytes, in row order)."""
    h = hashlib.sha256()
    for name in sorted(names):
        if hasattr(inputs[name], "fingerprint"):  # streamed (data/streaming.py): its rows' cells and files
            h.update(f"{name}|streamed|{inputs[name].fingerprint()}|".encode())
            continue
        x = inputs[name].detach().cpu().contiguous()
        h.update(f"{name}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.numpy().tobytes())
    return h.hexdigest()


def preprocessing_fingerprint(data, names, view: tuple[str, ...] = ()) -> str:
    specs = {m: asdict(data.modalities[m]) for m in sorted(names)}
    settings = {k: data.info[k] for k in ("preprocessing", "pca_variance", "audio_snr_db") if k in data.info}
    blob = json.dumps({"specs": specs, "settings": settings, "view": sorted(view)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_key(teacher_id: str, data, names, view: tuple[str, ...] = ()) -> CacheKey:
    return CacheKey(teacher_id, inputs_fingerprint(data.train.inputs, names),
                    preprocessing_fingerprint(data, names, view))


ALL_OUTPUTS = ("features", "logits")


def load(path: Path, key: CacheKey, rows: int, needs=ALL_OUTPUTS) -> tuple[dict[str, torch.Tensor] | None, str]:
    """({output: tensor} for each needed output, "hit") or (None, why it is a miss)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None, "no cache file yet"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return None, f"{path.name} is not a teacher cache of this version"
            changed = [part for part in ("teacher", "data", "preprocessing") if meta.get(part) != getattr(key, part)]
            if changed:
                return None, f"the {' and the '.join(changed)} changed"
            missing = [name for name in needs if name not in f.keys()]
            if missing:
                return None, f"the cache lacks the teacher's {' and '.join(missing)}"
            tensors = {name: f.get_tensor(name) for name in needs}
    except (SafetensorError, OSError, KeyError) as exc:
        return None, f"unreadable cache ({str(exc)[:80]})"
    for t in tensors.values():
        if t.shape[0] != rows:
            return None, f"cache holds {t.shape[0]} rows, the training set has {rows}"
    return tensors, "hit"


def save(path: Path, key: CacheKey, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=key.metadata())


def cached_outputs(path: Path, key: CacheKey, rows: int, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                   use_cache: bool = True, needs=ALL_OUTPUTS) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """(features, logits, info): from the cache on a hit, else computed (and stored).
    An output no term needs is None (and not stored)."""
    needs = tuple(n for n in ALL_OUTPUTS if n in needs)
    if not use_cache:
        feats, logits = compute()
        return feats, logits, {"status": "disabled"}
    hit, why = load(path, key, rows, needs)
    if hit is not None:
        console.print(f"teacher outputs: cache hit ({path})")
        return hit.get("features"), hit.get("logits"), {"status": "hit", "path": str(path)}
    console.print(f"teacher outputs: cache miss ({why}); computing them once for {rows} rows")
    feats, logits = compute()
    computed = {"features": feats, "logits": logits}
    save(path, key, {n: computed[n] for n in needs})
    return ((feats if "features" in needs else None), (logits if "logits" in needs else None),
            {"status": "miss", "reason": why, "path": str(path)})


@dataclass
class TeacherTargets:
    """What the distill stage needs from the teacher: precomputed outputs, or (augmentation
    on) a function that runs the teacher on each augmented batch."""

    logits: torch.Tensor | None  # (N_train, C); None in online mode or when no term needs logits
    feats: torch.Tensor | None  # (N_train, D), or (<= STATS_ROWS, D) in online mode: standardisation stats
    online: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    info: dict = field(default_factory=dict)


def teacher_targets(config, run, data, forward, device, teacher_names, view: tuple[str, ...] = (),
                    needs=ALL_OUTPUTS, teacher_file=None, cache_file: str = CACHE_FILE) -> TeacherTargets:
    """forward(inputs: dict) -> (features, logits), the teacher as the distill stage sees it.
    `needs`: the teacher outputs the objective's terms read (what the cache stores)."""
    from distill_export.data.augment import make_augment
    from distill_export.nets.external import teacher_identity
    from distill_export.train import predict

    names = [m for m in teacher_names if m in data.train.inputs] or sorted(data.train.inputs)
    train_inputs = {m: data.train.inputs[m].to(device) for m in names}
    augment = make_augment(config.distill.augment)
    if augment is not None:
        console.print(f"teacher outputs: cache not used: distill.augment={config.distill.augment} changes the "
                      "student's input every batch, so the teacher runs on each augmented batch")
        modality = config.data.student_modality
        n = min(STATS_ROWS, len(data.train))
        stats_feats, _ = predict(forward, {m: v[:n] for m, v in train_inputs.items()}, n)

        @torch.no_grad()
        def online(rows: torch.Tensor, x_student: torch.Tensor):
            batch = {m: v[rows] for m, v in train_inputs.items()}
            if modality in batch:
                batch[modality] = x_student
            return forward(batch)

        return TeacherTargets(None, stats_feats, online, augment,
                              {"status": "not used", "reason": f"augment={config.distill.augment}"})

    spec = teacher_file or config.teacher.path or run.file("teacher.pt")
    weights = None if teacher_file else config.teacher.weights
    key = make_key(teacher_identity(spec, weights), data, names, view)
    if config.distill.teacher_cache_dir:  # shared between runs: one file per teacher
        path = Path(config.distill.teacher_cache_dir).expanduser() / f"teacher_outputs-{key.teacher[:16]}.safetensors"
    else:
        path = run.file(cache_file)
    feats, logits, info = cached_outputs(
        path, key, len(data.train),
        lambda: predict(forward, train_inputs, len(data.train)), use_cache=config.distill.teacher_cache,
        needs=needs,
    )
    return TeacherTargets(logits, feats, info=info)
