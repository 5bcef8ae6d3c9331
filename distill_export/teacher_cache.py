"""Teacher-output cache: the teacher's (features, logits) on the non-augmented training set,
computed once, reused across epochs and runs.

Layout: a folder (default <run dir>/teacher_outputs/, or distill.teacher_cache_dir/
teacher_outputs-<teacher hash>/ to share it between runs) holding one NumPy .npy array per
output (features.npy (N, D), logits.npy (N, C), float32) and index.json with the key. The
arrays are appended to batch by batch during the teacher's one pass (each renamed into place
when complete; index.json is written last, so a folder without it, or with another key, is
never a hit) and read back memory-mapped: a hit returns ordinary tensors backed by the files,
so rows are paged in from the page cache when a batch indexes them, and the process's own
(anonymous) memory does not grow with the row count. The cache files are plain NumPy arrays, not safetensors shards,
so that callers keep receiving one (N, ...) tensor per output, indexable by row.

The key has three parts, so a miss can say what changed:

  teacher        content hash of the teacher (its .pt/.pt2 archive's members, or factory +
                 module source + weights); saving the same teacher twice gives the same hash
  data           content hash of the training inputs the teacher sees, in row order
  preprocessing  the modality specs (shape, normalisation, kind), the data's preprocessing
                 settings and the teacher's view (distill.teacher_view)

The folder stores only what the objective's terms need (``needs``: "logits", "features"); a
cache that lacks a needed output is a miss. Labels are not part of the key: the teacher's outputs do not depend on them, so runs that
keep different label fractions share one cache. With augmentation on (distill.augment) the
cache is not used: the teacher runs on every augmented batch instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from rich.console import Console

from distill_export.errors import CheckpointError, ConfigError
from distill_export.files import (atomic_path, npz_failure, own_folder, read_regular, refuse_special, sha256_file,
                                  write_json)

CACHE_DIR = "teacher_outputs"
INDEX_FILE = "index.json"
FORMAT = "distill-export/teacher-cache/3"  # /3: each output records its shape, dtype and sha256
SPOT_ROWS = 8  # a cache hit is compared with the teacher run on this many first rows
STATS_ROWS = 1024  # online mode: rows whose teacher features give the standardisation stats

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (features (B, D), logits (B, C)) per batch, in row order


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
_OTHER = {"teacher": "another teacher", "data": "other training inputs", "preprocessing": "other preprocessing"}


def load(path: Path, key: CacheKey, rows: int, needs=ALL_OUTPUTS) -> tuple[dict[str, torch.Tensor] | None, str]:
    """({output: (rows, ...) tensor, memory-mapped} for each needed output, "hit") or (None, why it is a miss)."""
    path = Path(path)
    index_file = path / INDEX_FILE
    if not index_file.is_file():
        return None, "no cache file yet"
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            return None, f"{path.name} is not a teacher cache of this version"
        changed = [part for part in ("teacher", "data", "preprocessing") if index.get(part) != getattr(key, part)]
        if changed:  # said of the cache: the teacher may be unchanged and the cache another's (47th audit K6)
            return None, f"it was made for {' and '.join(_OTHER[part] for part in changed)}"
        outputs = index.get("outputs") or {}
        missing = [name for name in needs if name not in outputs]
        if missing:
            return None, f"the cache lacks the teacher's {' and '.join(missing)}"
        arrays = {}
        for name in needs:
            if outputs[name]["file"] != f"{name}.npy":  # fifteenth audit: "../../other/logits.npy" was read
                return None, f"index.json names {str(outputs[name]['file'])[:80]!r} for the {name}, not {name}.npy in its folder"
            file = path / outputs[name]["file"]
            if file.stat().st_size != outputs[name]["bytes"]:
                return None, f"unreadable cache ({file.name} has {file.stat().st_size} bytes, the index says " \
                             f"{outputs[name]['bytes']})"
            # "c": copy-on-write mapping; pages are read on first touch and the file is never written.
            arrays[name] = np.load(file, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable cache ({npz_failure(exc)[:80]})"
    for a in arrays.values():
        if a.ndim == 0 or a.shape[0] != rows:
            return None, f"cache holds {a.shape[0] if a.ndim else 0} rows, the training set has {rows}"
    for name, a in arrays.items():
        held = (str(a.dtype), list(a.shape))
        if held != ("float32", outputs[name].get("shape")):  # fourteenth audit B1: same bytes, other layout
            return None, (f"{outputs[name]['file']} holds {held[0]} {tuple(held[1])}, the index says float32 "
                          f"{tuple(outputs[name].get('shape') or ())} (changed after it was written)")
    for name in arrays:  # fifteenth audit B1: an edit past the rows a hit is checked on was a hit
        try:
            digest = sha256_file(path / outputs[name]["file"])
        except OSError as exc:
            return None, f"unreadable cache ({npz_failure(exc)[:80]})"
        if digest != outputs[name].get("sha256"):
            return None, f"{outputs[name]['file']} changed after it was written (its sha256 is not the index's)"
    for name, a in arrays.items():  # outputs are checked finite before they are written: an edit (index too)
        bad = _non_finite(a)
        if bad:  # thirteenth audit B1: a NaN logits.npy was a "hit", its rows dropped or blamed on the lr
            return None, f"{outputs[name]['file']} holds {bad} NaN or inf values (changed after it was written)"
    return {name: torch.from_numpy(a) for name, a in arrays.items()}, "hit"


def _non_finite(array: np.ndarray, chunk: int = 65536) -> int:
    """How many values of a (memory-mapped) array are NaN or inf, read a chunk of rows at a time."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return sum(int(np.count_nonzero(~np.isfinite(array[i:i + chunk]))) for i in range(0, array.shape[0], chunk))


OWN_FILES = {INDEX_FILE, *(f"{name}.npy" for name in ALL_OUTPUTS)}  # what write() leaves in its folder


def check_own_folder(path: Path) -> None:
    """The cache writes only into a folder of its own (fourth audit B8): not through a symbolic
    link (RUN/teacher_outputs -> a user's folder had its index.json and logits.npy replaced), nor
    into a folder holding other files or an index.json the cache did not write. A ConfigError
    naming the folder and the file, before anything is computed or written."""
    path = own_folder(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder; the teacher-output cache writes its files into a folder of its own: "
                          "move it away and run the command again")
    for entry in sorted(path.iterdir()):
        name = entry.name
        leftover = name.startswith(tuple(f".{own}." for own in OWN_FILES)) and name.endswith(".tmp")  # atomic_path's
        if name in OWN_FILES and not entry.is_symlink() and not entry.is_file():  # a FIFO index.json (36th A1)
            refuse_special(entry)
        if (name not in OWN_FILES and not leftover) or entry.is_symlink() or not entry.is_file():
            raise ConfigError(f"{path} holds {name[:80]!r}, which the teacher-output cache does not write: it is not a "
                              "cache made by distill-export; move that folder away (or set distill.teacher_cache_dir) "
                              "and run the command again")
    index = path / INDEX_FILE
    try:
        written = json.loads(read_regular(index)) if index.exists() else None  # a FIFO: refused, never waited on
    except (OSError, ValueError):
        written = None  # damaged bytes, not another program's JSON: an unreadable cache, a miss rewritten
    if written is not None:
        fmt = written.get("format") if isinstance(written, dict) else None
        if not (isinstance(fmt, str) and fmt.startswith(FORMAT.rpartition("/")[0] + "/")):
            raise ConfigError(f"{index} is not the index of a teacher cache made by distill-export; move that folder "
                              "away (or set distill.teacher_cache_dir) and run the command again")


def write(path: Path, key: CacheKey, rows: int, batches: Batches, needs=ALL_OUTPUTS) -> None:
    """Append each batch to one .npy per needed output as it comes (never all rows in memory, and
    no mapping while writing), then write index.json. Nothing under a final name is half-written:
    each array is renamed into place when complete, and the index (what makes a hit) goes last."""
    path = Path(path)
    (path / INDEX_FILE).unlink(missing_ok=True)  # while rewriting, the old data is not a hit
    with contextlib.ExitStack() as stack:
        files, widths = {}, {}
        done = 0
        for feats, logits in batches:
            batch = {"features": feats, "logits": logits}
            if not files:  # the widths (D, C) are known from the first batch; the row count up front
                for name in needs:
                    widths[name] = tuple(batch[name].shape[1:])
                    files[name] = stack.enter_context(open(stack.enter_context(atomic_path(path / f"{name}.npy")), "wb"))
                    np.lib.format.write_array_header_1_0(files[name], {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                        "shape": (rows, *widths[name])})
            n = int(logits.shape[0])
            if done + n > rows:
                raise ValueError(f"the teacher produced more than the {rows} training rows")
            for name in needs:
                part = batch[name].detach().float().cpu().contiguous()
                if tuple(part.shape) != (n, *widths[name]):
                    raise ValueError(f"teacher {name} batch of shape {tuple(part.shape)}, expected (B, *{widths[name]})")
                files[name].write(part.numpy().tobytes())  # row-major float32: the .npy layout
            done += n
        if done != rows:
            raise ValueError(f"the teacher produced {done} rows, expected {rows}")
    outputs = {name: {"file": f"{name}.npy", "bytes": (path / f"{name}.npy").stat().st_size,
                      "dtype": "float32", "shape": [rows, *widths[name]], "sha256": sha256_file(path / f"{name}.npy")}
               for name in needs}
    write_json(path / INDEX_FILE, {**key.metadata(), "rows": rows, "outputs": outputs})


def save(path: Path, key: CacheKey, tensors: dict[str, torch.Tensor]) -> None:
    """Store whole tensors (one batch holding every row)."""
    rows = int(next(iter(tensors.values())).shape[0])
    batch = (tensors.get("features", torch.zeros(rows, 0)), tensors.get("logits", torch.zeros(rows, 0)))
    write(path, key, rows, [batch], needs=tuple(n for n in ALL_OUTPUTS if n in tensors))


def predict_batches(fn: Callable, inputs: dict[str, torch.Tensor], n_rows: int,
                    batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """fn(batch) -> (features, logits), batch by batch, as float32 on the CPU."""
    for start in range(0, n_rows, batch_size):
        # no_grad around each call, never around the yield: grad mode is the thread's, and a
        # generator left suspended (its consumer raised) would keep it off for whatever runs next
        with torch.no_grad():
            f, out = fn({k: v[start:start + batch_size] for k, v in inputs.items()})
        yield f.float().cpu(), out.float().cpu()


def check_finite(feats: torch.Tensor | None, logits: torch.Tensor, teacher, first_row: int | None = None,
                 rows: str = "rows of a batch", then: str = "nothing was cached") -> None:
    """A teacher's outputs are finite (fourth audit B9): NaN logits were cached, then distilled
    into nothing (pseudo_label) or blamed on the student (hinton). A one-line CheckpointError
    naming the teacher file, before anything is cached under a final name. `rows` and `then`
    word it for another caller (train_teacher.finite_outputs: before metrics are recorded)."""
    for name, out in (("logits", logits), ("features", feats)):
        if out is None or not out.is_floating_point() or out.numel() == 0:
            continue
        bad = ~torch.isfinite(out.detach()).reshape(out.shape[0], -1).all(1)  # (B,) rows with a NaN or inf
        if bool(bad.any()):
            where = "" if first_row is None else f", first at training row {first_row + int(bad.nonzero()[0])}"
            raise CheckpointError(
                f"teacher {teacher}: its outputs are not finite ({name} hold NaN or inf on {int(bad.sum())} of "
                f"{out.shape[0]} {rows}{where}); a teacher must give finite {name}: check its weights or "
                f"its export; {then}")


def finite_batches(batches: Batches, teacher) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches, each checked by check_finite as it comes (the cache is written batch by batch)."""
    done = 0
    for feats, logits in batches:
        check_finite(feats, logits, teacher, done)
        done += int(logits.shape[0])
        yield feats, logits


def cached_outputs(path: Path, key: CacheKey, rows: int, compute: Callable[[], Batches],
                   use_cache: bool = True, needs=ALL_OUTPUTS,
                   first_rows: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """(features, logits, info): from the cache on a hit, else computed batch by batch (and
    stored, then read back memory-mapped). compute() yields (features, logits) per batch in row
    order. An output no term needs is None (and not stored). first_rows() gives the teacher's
    (features, logits) on the first few rows: a hit that disagrees with them is a miss."""
    from distill_export import distributed as ddp

    needs = tuple(n for n in ALL_OUTPUTS if n in needs)
    if not use_cache:
        feats, logits = (torch.cat(parts) for parts in zip(*compute()))
        return feats, logits, {"status": "disabled"}
    if ddp.is_distributed():
        # Rank 0 alone fills the cache (one pass, one writer) in its run directory; the other
        # ranks (each in a scratch directory) wait for it and read what it wrote, memory-mapped,
        # under its key: every rank distills from rank 0's teacher outputs, as one process would.
        # Multi-node runs keep the run directory on a shared file system (docs/scale.md).
        if ddp.is_main():
            result = _fill(path, key, rows, compute, needs, first_rows)
            ddp.broadcast_object((str(path.resolve()), key))  # other ranks may have another working directory
            return result
        where, main_key = ddp.broadcast_object(None)
        stored, problem = load(Path(where), main_key, rows, needs)
        if stored is None:
            raise OSError(f"teacher cache {where}: rank {ddp.rank()} cannot read what rank 0 wrote ({problem}); "
                          "under torchrun on several machines the run directory must be on a shared file system")
        return stored.get("features"), stored.get("logits"), {"status": "read from rank 0", "path": where}
    return _fill(path, key, rows, compute, needs, first_rows)


def disagreement(stored: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> str | None:
    """Why the cached outputs of the first rows are not the teacher's (None: they are). A cache
    written on another device or in bf16 differs a little, so values get a loose tolerance:
    this catches an edited or foreign cache, not rounding."""
    for name, new in fresh.items():
        if name not in stored:
            continue
        old = stored[name][: new.shape[0]]
        if tuple(old.shape) != tuple(new.shape):
            return f"{name}.npy rows are {tuple(old.shape[1:])}, the teacher gives {tuple(new.shape[1:])}"
        scale = float(new.abs().max()) + 1.0
        if not torch.allclose(old.float(), new.float(), rtol=0.05, atol=0.05 * scale):
            worst = float((old.float() - new.float()).abs().max())
            return f"{name}.npy differs from the teacher's outputs on its first rows (by up to {worst:.3g})"
    return None


def _fill(path: Path, key: CacheKey, rows: int, compute: Callable[[], Batches], needs, first_rows=None):
    """One process: the cache's outputs on a hit, else computed, stored and read back."""
    hit, why = load(path, key, rows, needs)
    if hit is not None and first_rows is not None:
        feats, logits = first_rows()
        why = disagreement(hit, {"features": feats, "logits": logits}) or why
        hit = hit if why == "hit" else None
    if hit is not None:
        console.print(f"teacher outputs: cache hit ({path})")
        return hit.get("features"), hit.get("logits"), {"status": "hit", "path": str(path)}
    console.print(f"teacher outputs: cache miss ({why}); computing them once for {rows} rows")
    write(path, key, rows, compute(), needs)
    stored, problem = load(path, key, rows, needs)
    if stored is None:  # only a file changed under us between write and read gets here
        raise OSError(f"teacher cache {path} could not be read back: {problem}")
    return stored.get("features"), stored.get("logits"), {"status": "miss", "reason": why, "path": str(path)}


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
                    needs=ALL_OUTPUTS, teacher_file=None, cache_dir: str = CACHE_DIR) -> TeacherTargets:
    """forward(inputs: dict) -> (features, logits), the teacher as the distill stage sees it.
    `needs`: the teacher outputs the objective's terms read (what the cache stores)."""
    from distill_export.data.augment import make_augment
    from distill_export.nets.external import teacher_identity
    from distill_export.train import predict

    names = [m for m in teacher_names if m in data.train.inputs] or sorted(data.train.inputs)
    train_inputs = {m: data.train.inputs[m].to(device) for m in names}
    augment = make_augment(config.distill.augment)
    spec = teacher_file or config.teacher.path or run.file("teacher.pt")
    changes = [f"distill.{k}={getattr(config.distill, k)}" for k in ("augment", "mix") if getattr(config.distill, k) != "none"]
    if changes:
        console.print(f"teacher outputs: cache not used: {' and '.join(changes)} changes the student's input every "
                      "batch, so the teacher runs on each batch the student sees (consistent teaching)")
        modality = config.data.student_modality
        n = min(STATS_ROWS, len(data.train))
        stats_feats, stats_logits = predict(forward, {m: v[:n] for m, v in train_inputs.items()}, n)
        check_finite(stats_feats, stats_logits, spec)

        @torch.no_grad()
        def online(rows: torch.Tensor, x_student: torch.Tensor, mix=None):
            """The teacher on the student's (augmented, mixed) batch, with the row's other modalities
            mixed the same way (the same partner and lam)."""
            batch = {m: v[rows] for m, v in train_inputs.items()}
            if mix is not None:
                batch = {m: mix.apply(v) for m, v in batch.items()}
            if modality in batch:
                batch[modality] = x_student
            feats, logits = forward(batch)
            check_finite(feats, logits, spec)
            return feats, logits

        return TeacherTargets(None, stats_feats, online, augment,
                              {"status": "not used", "reason": ", ".join(c.split(".", 1)[1] for c in changes)})

    weights = None if teacher_file else config.teacher.weights
    key = make_key(teacher_identity(spec, weights), data, names, view)
    if config.distill.teacher_cache_dir:  # shared between runs: one folder per teacher
        path = Path(config.distill.teacher_cache_dir).expanduser() / f"{CACHE_DIR}-{key.teacher[:16]}"
    else:
        path = run.file(cache_dir)
    if config.distill.teacher_cache:
        check_own_folder(path)
    feats, logits, info = cached_outputs(
        path, key, len(data.train),
        lambda: finite_batches(predict_batches(forward, train_inputs, len(data.train)), spec), use_cache=config.distill.teacher_cache,
        needs=needs, first_rows=lambda: next(predict_batches(forward, train_inputs, SPOT_ROWS, batch_size=SPOT_ROWS)),
    )
    return TeacherTargets(logits, feats, info=info)
