"""Manifest datasets: a CSV or JSONL file listing one sample per row.

Columns: one per modality (an image path, a WAV path, a video path or folder of frames, or the
text itself), `label` (empty = an unlabeled row, used for distillation only; the task's codec
reads it: a class, or boxes, data/boxes.py), and optionally `split` (train/val/test, or
calibration: rows only the INT8 export reads; without it the labeled rows are split 80/10/10 per
class with the seed). `id` matches COCO image ids (data.annotations), else is ignored. Paths are
relative to the manifest's folder. A column's kind comes from its name (image, audio, text,
video, or name_kind / kind_name), else from its file extensions. A video column gives two
modalities: the clip and its target frame (data/video.py).
Reading and checking rows: manifest_rows.py; decoding cells and streaming: manifest_decode.py;
label cells: manifest_targets.py; how decoded rows are held (uint8 for 8-bit images): compact.py.

Every row is read and checked before any training: bad rows are listed as file:line and
the run fails (DataError, exit 2), or they are skipped with data.skip_bad_rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill_export.data.audio import DEMO_AUDIO_SPEC
from distill_export.data.dataset import IGNORE_INDEX, Dataset, ModalitySpec, Split, labeled_rows
from distill_export.data.targets import CategoricalTargets, TargetCodec
from distill_export.data import loaders
from distill_export.data.compact import CompactColumn, ColumnStore, normalised_lut, to_unit_float, uint8_mean_std, widen
from distill_export.data.manifest_decode import (choose_streaming, fix_auto_sizes, fix_float_scales, make_decoders,
                                                 scan_train_rows, streamed_split)
from distill_export.data.manifest_rows import (CALIBRATION, SPLITS, Problem, Row, check_cells, console, draw_splits,
                                               read_rows, report_problems)
from distill_export.data.manifest_targets import apply_annotations, check_labels, classes_of, encoder, hide_labels
from distill_export.errors import DataError

LAYOUTS = {"image": "NCHW", "audio": "NCHW", "text": "NL", "vector": "NC", "video": "NTCHW"}


class ManifestError(DataError):
    """Bad rows in a manifest; `problems` lists them (file:line and what is wrong)."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


def resolve_manifest(source: str) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(source)))
    if path.is_dir():
        for name in ("manifest.csv", "manifest.jsonl"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"no manifest.csv or manifest.jsonl in {path}")
    if not path.is_file():
        raise DataError(missing_manifest(path))
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"manifest {path} must be a .csv or .jsonl file")
    return path


# The shipped recipes' manifests are built by a tool of a checkout (tools/ is not in the wheel),
# from data the user has (the MNIST test set, FSDD): a missing one says which (45th audit R1).
BUILDERS = {
    "avmnist": "python tools/prepare_avmnist.py --mnist MNIST_DIR --fsdd FSDD_RECORDINGS_DIR",
    "captioned_digits": "python tools/make_captioned_digits.py --mnist MNIST_DIR",
}


def missing_manifest(path: str | Path) -> str:
    """The one-line error for a manifest that is not there, with the command that builds it."""
    path = Path(path)
    if path.exists():  # there, but no regular file (a device, a FIFO, a folder): said as what it is
        kind = "a folder" if path.is_dir() else "a device, FIFO or other special file"
        return f"manifest {path} is not a regular file ({kind}); give a .csv or .jsonl file"
    # a recipe's own place, <name>/manifest.csv; not any path holding the name (45th audit R2)
    if path.name == "manifest.csv" and (command := BUILDERS.get(path.parent.name)):
        return (f"manifest {path} does not exist; build it in a checkout of distill-export with: {command} "
                f"--out {path.parent} (docs/byo-data.md)")
    return f"manifest {path} does not exist"


# ----- loading -------------------------------------------------------------------------------
def build_manifest_dataset(config, seed: int, targets: TargetCodec | None = None) -> Dataset:
    """Read, check and decode a manifest into the in-memory Dataset the pipeline consumes.
    `targets` (the task's codec) turns the label cells into targets; default: one category each."""
    targets = targets or CategoricalTargets()
    path = resolve_manifest(config.source)
    modalities, columns, rows, problems = read_rows(path, need_label=not getattr(config, "annotations", ""))
    if not rows and not problems:
        raise DataError(f"{path} has a header but no rows: add one row per sample under it")
    has_split = "split" in columns
    kinds = {m: loaders.kind_of_column(m, [r.cells[m] for r in rows[:50]]) for m in modalities}
    decoders = make_decoders(modalities, kinds, rows, config, path.parent)  # a video column adds its frame
    targets, coco = apply_annotations(config, path, rows, decoders, targets, problems)
    if coco is not None:
        bad = {p.line for p in problems}
        rows = [r for r in rows if r.line not in bad]
    if rows and all(r.label is None for r in rows):
        raise DataError(f"{path}: no row has a label (an empty label marks an unlabeled row, which only "
                        "distillation uses); the teacher and the baseline need labeled rows")

    text_columns = [m for m in modalities if kinds[m] == "text"]
    if text_columns and str(getattr(config, "text_encoder", "hashed")).lower() == "wordllama" and rows:
        try:
            import wordllama  # noqa: F401  (optional; the wheel ships its weights)
        except ImportError:
            raise DataError(f"{path}:{rows[0].line}: text column {text_columns[0]!r}: data.text_encoder=wordllama "
                            "is not installed (pip install 'distill-export[wordllama]', or text_encoder: hashed)") from None

    path_columns = {m for m in modalities if kinds[m] != "text"}  # image, audio, video cells name files
    good = []
    for row in rows:
        msg = check_cells(row, path_columns)
        if msg:
            problems.append(Problem(row.line, msg))
        else:
            good.append(row)
    if not has_split:
        draw_splits(good, seed)

    # Optional subsample of the training rows (a recipe's budget), before decoding.
    subsampled_from = None
    sampled_out: set[str] = set()  # labels of training rows left out: still known classes
    max_train = int(getattr(config, "max_train_rows", 0) or 0)
    train_rows = [r for r in good if r.split == "train"]
    if 0 < max_train < len(train_rows):
        rng = np.random.default_rng(seed)
        keep = {id(train_rows[i]) for i in rng.choice(len(train_rows), max_train, replace=False)}
        subsampled_from = len(train_rows)
        sampled_out = {r.label for r in train_rows if id(r) not in keep and r.label is not None}
        good = [r for r in good if r.split != "train" or id(r) in keep]
        _note_classes_drawn_out(targets, train_rows, keep, max_train)

    fix_auto_sizes(path, good, decoders)  # data.image_size=0: from the first header, before decoding
    fix_float_scales(good, decoders)  # mode-F images: one scale per column, before decoding
    streaming = choose_streaming(config, path, good, decoders)
    decoded = []
    # Each split's rows are decoded into storage allocated once (data/compact.py): no list of
    # arrays stacked afterwards, so the decode peak stays close to what is held.
    stores = {s: {m: ColumnStore(sum(1 for r in good if r.split == s)) for m in modalities}
              for s in {r.split for r in good} if not (streaming and s == "train")}
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny STFTs: threads only add overhead
    try:
        if streaming:  # the training rows: decoded once in the workers, not kept
            decoded, scanned = scan_train_rows(config, good, decoders, problems)
        for row in good:
            if streaming and row.split == "train":
                continue
            try:
                values = {m: decoders[m].decode(row.cells[m], compact=True) for m in modalities}
                row.slots = {m: stores[row.split][m].add(v, row.line, m) for m, v in values.items()}
            except DataError as exc:
                problems.append(Problem(row.line, str(exc)))
                continue
            decoded.append(row)
    finally:
        torch.set_num_threads(prev_threads)

    ok, known = check_labels(targets, decoded, sampled_out, config, decoders, problems)

    if problems:
        skip = bool(getattr(config, "skip_bad_rows", False))
        if len(problems) == 1 and not skip:  # one bad row: the error line itself names it
            p = problems[0]
            raise ManifestError(f"{path}:{p.line}: bad row: {p.message}; fix it or pass --skip-bad-rows", problems)
        report_problems(path, problems, skipping=skip)
        if not skip:
            raise ManifestError(
                f"{len(problems)} bad row{'s' * (len(problems) > 1)} in {path} (listed above; first: "
                f"line {min(p.line for p in problems)}); fix them or pass --skip-bad-rows", problems)
        console.print(f"{path}: skipped {len(problems)} bad rows")

    names = targets.names(known & classes_of(targets, ok), str(path))
    for name in SPLITS:
        n = sum(1 for r in ok if r.split == name and (r.label is not None or name != "train"))
        if n == 0:
            what = "labeled training rows" if name == "train" else f"rows in the {name} split"
            raise DataError(f"{path}: no {what}" + (" (see its 'split' column)" if has_split else ""))

    splits_here = (*SPLITS, CALIBRATION) if any(r.split == CALIBRATION for r in ok) else SPLITS
    per_split: dict[str, list[Row]] = {s: [r for r in ok if r.split == s] for s in splits_here}
    in_memory = [s for s in splits_here if not (streaming and s == "train")]
    held = {s: {m: stores[s][m].rows([r.slots[m] for r in per_split[s]]) for m in modalities} for s in in_memory}
    del stores
    for m, dec in decoders.items():  # uniform shapes per modality, over all splits at once
        if dec.kind == "text" and dec.text_encoder == "wordllama":  # embedded in one batch, as before
            flat = iter(dec.finish([t for s in in_memory for t in held[s][m]]))
            for s in in_memory:
                held[s][m] = np.stack([next(flat) for _ in held[s][m]])
        elif dec.kind in ("image", "video") and dec.any_color:  # gray -> RGB when any image is in colour
            for s in in_memory:
                if held[s][m].shape[-3] == 1:
                    held[s][m] = widen(held[s][m], len(held[s][m]))

    encode = encoder(targets, ok, config, decoders)
    labels_of = {s: encode(per_split[s], names) for s in splits_here}
    specs, stats = {}, {}
    if streaming:
        from distill_export.data.streaming import stats_from_summaries

        stream_stats, stream_shapes = stats_from_summaries([scanned[id(r)] for r in per_split["train"]], decoders)
    inputs_of: dict[str, dict] = {s: {} for s in splits_here}
    for m, dec in decoders.items():
        kind = dec.final_kind
        # an 8-bit image column stays uint8 (every in-memory split), normalised per batch (CompactColumn)
        can_compact = kind == "image" and dec.clip is None
        for s in in_memory:
            a = held[s][m]
            if not (can_compact and a.dtype == np.uint8):  # float32(u) / 255, as images were read
                held[s][m] = torch.from_numpy(to_unit_float(a) if a.dtype == np.uint8 else a)
        if streaming:
            stats[m] = stream_stats[m]
            specs[m] = ModalitySpec(m, stream_shapes[m], *stats[m], LAYOUTS[kind], kind=kind)
        else:
            x = held["train"][m]
            if kind == "text":
                stats[m] = (0.0, 1.0)  # token ids: nothing to normalise
            elif isinstance(x, np.ndarray):  # uint8: exact, from a histogram of the bytes, no float copy
                stats[m] = uint8_mean_std(x)
            elif dec.clip is not None:  # a video column's clip or frame: no float64 copy of it
                stats[m] = _chunked_mean_std(x)
            else:
                # float64 numpy: the same stats whatever torch's thread count (the cache hashes the result)
                xd = x.numpy().astype(np.float64)
                mean, std = float(xd.mean()), float(xd.std(ddof=1))
                stats[m] = (mean, std if std > 0 else 1.0)
                del xd
            specs[m] = ModalitySpec(m, tuple(x.shape[1:]), *stats[m], LAYOUTS[kind], kind=kind)
        for s in in_memory:
            v = held[s][m]
            if isinstance(v, np.ndarray):
                v = CompactColumn(torch.from_numpy(v), normalised_lut(*stats[m]))
            elif kind != "text":
                v.sub_(stats[m][0]).div_(stats[m][1])  # in place: (v - mean) / std, the same float32 ops
            inputs_of[s][m] = v
    raw = {s: (inputs_of[s], labels_of[s]) for s in splits_here}
    splits = {}
    for s, (inputs, labels) in raw.items():
        hidden = None
        if s == "train":
            full, labels = labels, hide_labels(targets, labels, config.label_fraction, seed)
            if config.label_fraction < 1.0:  # the hidden rows' true targets, to score pseudo-labels
                hidden = full.clone()
                hidden[labeled_rows(labels)] = IGNORE_INDEX
        if s not in in_memory:
            splits[s] = streamed_split(path, per_split[s], decoders, stats, specs, labels,
                                        int(getattr(config, "num_workers", 0) or 0))
            splits[s].hidden = hidden
            continue
        splits[s] = Split(inputs, labels, hidden)

    resampled = {sr: n for d in decoders.values() for sr, n in d.sample_rates.items() if sr != DEMO_AUDIO_SPEC["sample_rate"]}
    if resampled:
        console.print(f"{path}: resampled {sum(resampled.values())} WAV files to {DEMO_AUDIO_SPEC['sample_rate']} Hz "
                      f"(from {', '.join(f'{sr} Hz' for sr in sorted(resampled))})")
    name = path.parent.name if path.stem == "manifest" else path.stem
    data = Dataset(
        name=name, train=splits["train"], val=splits["val"], test=splits["test"],
        target_names=names, modalities=specs, calibration=splits.get(CALIBRATION),
        info={
            "manifest": str(path),
            "kinds": {m: s.kind for m, s in specs.items()},
            # a modality decoded from another column (a video's target frame) -> that column
            "frame_of": {m: d.cell_column for m, d in decoders.items() if d.cell_column != m},
            "sizes": {s: len(splits[s]) for s in SPLITS},
            "labeled_train_rows": int(splits["train"].labeled.sum()),
            "unlabeled_train_rows": sum(1 for r in per_split["train"] if r.label is None),
            "label_fraction": config.label_fraction,
            "split": "column" if has_split else f"drawn per class with seed {seed}",
            "skipped_rows": len(problems),
            "streaming": streaming,
            "train_rows_subsampled_from": subsampled_from,
            "resampled_wavs": {str(k): v for k, v in resampled.items()},
            "preprocessing": {
                "image_size": getattr(config, "image_size", 0), "image_mode": getattr(config, "image_mode", "auto"),
                "audio": DEMO_AUDIO_SPEC, "text_encoder": getattr(config, "text_encoder", "hashed"),
                "text": {"buckets": loaders.TEXT_BUCKETS, "ngrams": list(loaders.TEXT_NGRAMS),
                         "max_tokens": loaders.TEXT_MAX_TOKENS},
            },
        },
    )
    if CALIBRATION in splits:
        data.info["calibration_rows"] = len(splits[CALIBRATION])
    if any(spec.kind == "video" for spec in specs.values()):
        data.info["preprocessing"]["clip_frames"] = int(getattr(config, "clip_frames", 5))
    if coco is not None:  # what a COCO results file needs: category ids, the held-out splits' image ids
        data.info["coco"] = {**coco, "image_ids": {s: [_coco_id(r) for r in per_split[s]]
                                                   for s in splits_here if s != "train"}}
    return data


def _note_classes_drawn_out(targets, train_rows: list[Row], keep: set[int], max_train: int) -> None:
    """max_train_rows draws training rows uniformly: a rare class can lose every one, and the
    student is then never trained on it (48th audit D1). Said, for class labels (a box codec's
    cells are parsed later, where a bad one is a bad row)."""
    if getattr(targets, "classes", None) is not None:
        return
    lost = sorted({r.label for r in train_rows if r.label is not None}
                  - {r.label for r in train_rows if id(r) in keep and r.label is not None})
    if lost:
        shown = ", ".join(repr(c) for c in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        console.print(f"note: data.max_train_rows {max_train} keeps no training row of {len(lost)} class"
                      f"{'es' * (len(lost) > 1)} ({shown}): the student is never trained on "
                      f"{'them' if len(lost) > 1 else 'it'}; raise data.max_train_rows", highlight=False,
                      soft_wrap=True, markup=False)


def _coco_id(row):
    """The row's COCO image id as the annotation file gives it: an id from the file's text would
    turn "007" into 7 (no image in a COCO evaluator) and "\u00b2" into a traceback (35th audit B3, B4)."""
    if row.coco_id is not None:
        return int(row.coco_id) if isinstance(row.coco_id, float) else row.coco_id
    return row.id


def _chunked_mean_std(x: torch.Tensor, rows: int = 256) -> tuple[float, float]:
    """(mean, std with ddof=1) in float64, two passes over chunks of rows: no float64 copy of a
    video column (hundreds of MB as float32)."""
    a = x.numpy()
    n = a.size
    mean = sum(float(a[i : i + rows].sum(dtype=np.float64)) for i in range(0, len(a), rows)) / n
    sq = sum(float(np.square(a[i : i + rows].astype(np.float64) - mean).sum()) for i in range(0, len(a), rows))
    std = float(np.sqrt(sq / max(n - 1, 1)))
    return mean, std if std > 0 else 1.0
