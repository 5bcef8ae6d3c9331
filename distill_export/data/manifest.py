"""Manifest datasets: a CSV or JSONL file listing one sample per row.

Columns: one per modality (an image path, a WAV path, or the text itself), `label`
(empty = an unlabeled row, used for distillation only), and optionally `split`
(train/val/test; without it the labeled rows are split 80/10/10 per class with the seed).
`id` is ignored. Paths are relative to the manifest's folder. A column's kind comes from
its name (image, audio, text, or name_kind / kind_name), else from its file extensions.

Every row is read and checked before any training: bad rows are listed as file:line and
the run fails (DataError, exit 2), or they are skipped with data.skip_bad_rows.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from distill_export.data.audio import DEMO_AUDIO_SPEC
from distill_export.data.dataset import Dataset, ModalitySpec, Split, keep_label_fraction, labeled_rows
from distill_export.data.targets import CategoricalTargets, TargetCodec
from distill_export.data import loaders
from distill_export.errors import DataError

RESERVED = ("label", "split", "id")
SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = {"val": 0.1, "test": 0.1}  # per class, when there is no split column
_EXTRA = "\0extra"  # DictReader's key for fields beyond the header
LAYOUTS = {"image": "NCHW", "audio": "NCHW", "text": "NL", "vector": "NC"}

console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Row:
    line: int
    cells: dict[str, str]  # modality column -> path or text, stripped
    label: str | None  # None: unlabeled
    split: str | None  # None: drawn with the seed
    values: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> decoded array


@dataclass
class Problem:
    line: int
    message: str


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


# The shipped recipes' manifests are built by a tool: a missing one says which.
BUILDERS = {
    "avmnist": "python tools/prepare_avmnist.py --mnist ../shared/data/mnist --fsdd ../shared/data/fsdd/recordings",
    "captioned_digits": "python tools/make_captioned_digits.py --mnist ../shared/data/mnist",
}


def missing_manifest(path: str | Path) -> str:
    """The one-line error for a manifest that is not there, with the command that builds it."""
    path = Path(path)
    for name, command in BUILDERS.items():
        if name in str(path):
            return f"manifest {path} does not exist; build it with: {command} --out {path.parent}"
    return f"manifest {path} does not exist"


# ----- parsing -------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _read_csv(path: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, dict]]]:
    records = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, restkey=_EXTRA)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if len(set(columns)) != len(columns):
            raise DataError(f"{path}:1: duplicate column names in the header: {columns}")
        reader.fieldnames = columns
        for rec in reader:
            line = reader.line_num
            if _EXTRA in rec:
                n = len(columns) + len(rec[_EXTRA])
                problems.append(Problem(line, f"{n} fields, the header has {len(columns)}"))
                continue
            if any(v is None for v in rec.values()):
                problems.append(Problem(line, f"fewer fields than the header's {len(columns)}"))
                continue
            records.append((line, rec))
    return columns, records


def _read_jsonl(path: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, dict]]]:
    records, columns = [], {}
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(Problem(line, f"not valid JSON: {exc.msg}"))
                continue
            if not isinstance(rec, dict):
                problems.append(Problem(line, "not a JSON object"))
                continue
            columns.update(dict.fromkeys(rec))
            records.append((line, rec))
    return list(columns), records


def read_rows(path: Path) -> tuple[list[str], list[str], list[Row], list[Problem]]:
    """Parse the manifest: (modality columns, all columns, rows, format problems)."""
    problems: list[Problem] = []
    try:
        reader = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
        columns, records = reader(path, problems)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from None
    if "label" not in columns:
        raise DataError(f"manifest {path} has no 'label' column (columns: {', '.join(columns) or 'none'})")
    modalities = [c for c in columns if c not in RESERVED]
    if not modalities:
        raise DataError(f"manifest {path} has no modality column, only {', '.join(columns)}")
    rows = []
    for line, rec in records:
        label = _cell(rec.get("label"))
        split = _cell(rec.get("split")).lower() if "split" in columns else None
        rows.append(Row(line, {m: _cell(rec.get(m)) for m in modalities}, label or None, split))
    return modalities, columns, rows, problems


# ----- checks --------------------------------------------------------------------------------
def _check_cells(row: Row) -> str | None:
    if row.split is not None and row.split not in SPLITS:
        return f"unknown split {row.split!r} (train, val or test)" if row.split else "empty split (train, val or test)"
    if row.label is None and row.split in ("val", "test"):
        return f"missing label in the {row.split} split (unlabeled rows serve distillation only, so belong to train)"
    for col, value in row.cells.items():
        if not value:
            return f"empty {col!r} cell"  # every row's cells feed the teacher (targets, scores)
    return None


def _draw_splits(rows: list[Row], seed: int) -> None:
    """Per label, shuffle and put 10% in val and 10% in test; unlabeled rows go to train."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        if row.label is None:
            row.split = "train"
        else:
            by_label.setdefault(row.label, []).append(row)
    for label in sorted(by_label):
        group = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        n_val = int(round(HELD_OUT_FRACTION["val"] * len(group)))
        n_test = int(round(HELD_OUT_FRACTION["test"] * len(group)))
        for i, row in enumerate(group):
            row.split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def report_problems(path: Path, problems: list[Problem], skipping: bool) -> None:
    verb = "skipping" if skipping else "bad row"
    for p in sorted(problems, key=lambda p: p.line):
        console.print(f"{path}:{p.line}: {verb}: {p.message}")


# ----- loading -------------------------------------------------------------------------------
class _Decoder:
    """Decodes one modality column; remembers what it needs to finish (image size/channels)."""

    def __init__(self, column: str, kind: str, config, base: Path):
        self.column, self.kind, self.base = column, kind, base
        size = int(getattr(config, "image_size", 0) or 0)
        self.size: tuple[int, int] | None = (size, size) if size > 0 else None
        self.mode = str(getattr(config, "image_mode", "auto")).lower()
        self.text_encoder = str(getattr(config, "text_encoder", "hashed")).lower()
        self.sample_rates: dict[int, int] = {}
        self.any_color = False
        from distill_export.data.audio import MAX_AUDIO_SECONDS

        # data.max_audio_seconds where the config declares it, else the default limit
        self.max_audio_seconds = float(getattr(config, "max_audio_seconds", None) or MAX_AUDIO_SECONDS)

    def path(self, cell: str) -> Path:
        p = Path(os.path.expanduser(cell))
        return p if p.is_absolute() else self.base / p

    def decode(self, cell: str) -> np.ndarray | str:
        try:
            return self._decode(cell)
        except OSError as exc:  # e.g. a path longer than the file system allows (ENAMETOOLONG)
            shown = cell if len(cell) <= 80 else cell[:77] + "..."
            raise DataError(f"{self.column} {shown!r}: {exc.strerror or type(exc).__name__}") from None

    def _decode(self, cell: str) -> np.ndarray | str:
        if self.kind == "image":
            im = loaders.read_image(self.path(cell))
            if self.size is None:
                self.size = (im.height, im.width)  # auto: the first readable image's size
            rgb = self.mode == "rgb" or (self.mode == "auto" and not loaders.is_grayscale(im))
            self.any_color |= rgb
            return loaders.image_to_array(im, self.size, rgb)
        if self.kind == "audio":
            x, sr = loaders.load_audio(self.path(cell), DEMO_AUDIO_SPEC, max_seconds=self.max_audio_seconds)
            self.sample_rates[sr] = self.sample_rates.get(sr, 0) + 1
            return x
        if self.text_encoder == "wordllama":
            return cell  # embedded in one batch in finish()
        return loaders.hash_text(cell)

    def finish(self, values: list) -> list[np.ndarray]:
        """Make every row's array the same shape (gray -> RGB when any image is in color)."""
        if self.kind == "image" and self.any_color:
            return [np.repeat(v, 3, axis=0) if v.shape[0] == 1 else v for v in values]
        if self.kind == "text" and self.text_encoder == "wordllama":
            return list(loaders.sentence_embeddings(values))
        return values

    @property
    def final_kind(self) -> str:
        return "vector" if self.kind == "text" and self.text_encoder == "wordllama" else self.kind


def build_manifest_dataset(config, seed: int, targets: TargetCodec | None = None) -> Dataset:
    """Read, check and decode a manifest into the in-memory Dataset the pipeline consumes.
    `targets` (the task's codec) turns the label cells into targets; default: one category each."""
    targets = targets or CategoricalTargets()
    path = resolve_manifest(config.source)
    modalities, columns, rows, problems = read_rows(path)
    has_split = "split" in columns
    kinds = {m: loaders.kind_of_column(m, [r.cells[m] for r in rows[:50]]) for m in modalities}

    text_columns = [m for m in modalities if kinds[m] == "text"]
    if text_columns and str(getattr(config, "text_encoder", "hashed")).lower() == "wordllama" and rows:
        try:
            import wordllama  # noqa: F401  (optional; the wheel ships its weights)
        except ImportError:
            raise DataError(f"{path}:{rows[0].line}: text column {text_columns[0]!r}: data.text_encoder=wordllama "
                            "is not installed (pip install 'distill-export[wordllama]', or text_encoder: hashed)") from None

    good = []
    for row in rows:
        msg = _check_cells(row)
        if msg:
            problems.append(Problem(row.line, msg))
        else:
            good.append(row)
    if not has_split:
        _draw_splits(good, seed)

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

    decoders = {m: _Decoder(m, kinds[m], config, path.parent) for m in modalities}
    streaming = _choose_streaming(config, path, good, decoders)
    decoded = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny STFTs: threads only add overhead
    try:
        if streaming:  # the training rows: decoded once in the workers, not kept
            decoded, scanned = _scan_train_rows(config, good, decoders, problems)
        for row in good:
            if streaming and row.split == "train":
                continue
            try:
                row.values = {m: decoders[m].decode(row.cells[m]) for m in modalities}
            except DataError as exc:
                problems.append(Problem(row.line, str(exc)))
                continue
            decoded.append(row)
    finally:
        torch.set_num_threads(prev_threads)

    known = {r.label for r in decoded if r.split == "train" and r.label is not None} | sampled_out
    ok = []
    for row in decoded:
        if row.label is not None and row.label not in known:
            problems.append(Problem(row.line, f"unknown label {row.label!r}: no training row has it"))
        else:
            ok.append(row)

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

    names = targets.names(known & {r.label for r in ok}, str(path))
    for name in SPLITS:
        n = sum(1 for r in ok if r.split == name and (r.label is not None or name != "train"))
        if n == 0:
            what = "labeled training rows" if name == "train" else f"rows in the {name} split"
            raise DataError(f"{path}: no {what}" + (" (see its 'split' column)" if has_split else ""))

    per_split: dict[str, list[Row]] = {s: [r for r in ok if r.split == s] for s in SPLITS}
    in_memory = [s for s in SPLITS if not (streaming and s == "train")]
    for m, dec in decoders.items():  # uniform shapes per modality, over all splits at once
        flat = dec.finish([r.values[m] for s in in_memory for r in per_split[s]])
        it = iter(flat)
        for s in in_memory:
            for r in per_split[s]:
                r.values[m] = next(it)

    raw = {
        s: ({m: torch.from_numpy(np.stack([r.values[m] for r in per_split[s]])) for m in modalities}
            if s in in_memory else {},
            targets.encode([r.label for r in per_split[s]], names))
        for s in SPLITS
    }
    specs, stats = {}, {}
    if streaming:
        from distill_export.data.streaming import stats_from_summaries

        stream_stats, stream_shapes = stats_from_summaries([scanned[id(r)] for r in per_split["train"]], decoders)
    for m, dec in decoders.items():
        kind = dec.final_kind
        if streaming:
            stats[m] = stream_stats[m]
            specs[m] = ModalitySpec(m, stream_shapes[m], *stats[m], LAYOUTS[kind], kind=kind)
            continue
        x = raw["train"][0][m]
        if kind == "text":
            mean, std = 0.0, 1.0  # token ids: nothing to normalise
        else:
            # float64 numpy: the same stats whatever torch's thread count (the cache hashes the result)
            xd = x.numpy().astype(np.float64)
            mean, std = float(xd.mean()), float(xd.std(ddof=1))
            std = std if std > 0 else 1.0
        stats[m] = (mean, std)
        specs[m] = ModalitySpec(m, tuple(x.shape[1:]), mean, std, LAYOUTS[kind], kind=kind)
    splits = {}
    for s, (inputs, labels) in raw.items():
        if s == "train":
            labels = _hide_labels(labels, config.label_fraction, seed)
        if s not in in_memory:
            splits[s] = _streamed_split(path, per_split[s], decoders, stats, specs, labels,
                                        int(getattr(config, "num_workers", 0) or 0))
            continue
        inputs = {m: (v if specs[m].kind == "text" else (v.float() - stats[m][0]) / stats[m][1]) for m, v in inputs.items()}
        splits[s] = Split(inputs, labels)

    resampled = {sr: n for d in decoders.values() for sr, n in d.sample_rates.items() if sr != DEMO_AUDIO_SPEC["sample_rate"]}
    if resampled:
        console.print(f"{path}: resampled {sum(resampled.values())} WAV files to {DEMO_AUDIO_SPEC['sample_rate']} Hz "
                      f"(from {', '.join(f'{sr} Hz' for sr in sorted(resampled))})")
    name = path.parent.name if path.stem == "manifest" else path.stem
    return Dataset(
        name=name, train=splits["train"], val=splits["val"], test=splits["test"],
        class_names=names, modalities=specs,
        info={
            "manifest": str(path),
            "kinds": {m: s.kind for m, s in specs.items()},
            "sizes": {s: len(sp) for s, sp in splits.items()},
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


def _choose_streaming(config, path: Path, rows: list[Row], decoders: dict) -> bool:
    """data.streaming on/off, or auto: stream the training split when decoding it would take more
    than data.stream_above_mb of RAM (estimated from the first readable row). Logged either way."""
    from distill_export.data.streaming import decoded_bytes

    mode = str(getattr(config, "streaming", "off"))
    train = [r for r in rows if r.split == "train"]
    if mode == "off" or not train:
        return False
    wordllama = [m for m, d in decoders.items() if d.kind == "text" and d.text_encoder == "wordllama"]
    if wordllama:
        if mode == "on":
            raise DataError(f"data.streaming=on cannot embed the {wordllama[0]!r} column with wordllama per "
                            "sample; use text_encoder=hashed or data.streaming=off")
        return False
    shapes = {}
    for m, d in decoders.items():  # in row order, as the in-memory decode goes: this also fixes
        for row in rows:  # data.image_size=0 (auto) to the first readable image's size
            try:
                shapes[m] = np.shape(d.decode(row.cells[m]))
                break
            except DataError:
                continue
    if len(shapes) < len(decoders):
        return False  # a column where nothing decodes: the in-memory path lists every bad row
    for d in decoders.values():
        d.sample_rates.clear()
    mb = decoded_bytes(len(train), shapes) / 2**20
    limit = int(getattr(config, "stream_above_mb", 2048))
    streaming = mode == "on" or mb > limit
    why = "data.streaming=on" if mode == "on" else f"{'over' if streaming else 'within'} data.stream_above_mb={limit}"
    console.print(f"{path}: {len(train)} training rows, ~{mb:.0f} MB decoded ({why}): "
                  + ("streamed from disk in DataLoader workers" if streaming else "decoded into memory"))
    return streaming


def _scan_train_rows(config, rows: list[Row], decoders: dict, problems: list[Problem]):
    """Decode every training row once (in data.num_workers workers) without keeping it: the rows
    that decode and {id(row): per-row summary} for the normalisation statistics."""
    from distill_export.data.streaming import scan_rows

    train = [r for r in rows if r.split == "train"]
    bad, summaries = scan_rows([r.cells for r in train], decoders, int(getattr(config, "num_workers", 0) or 0))
    for i, message in bad.items():
        problems.append(Problem(train[i].line, message))
    return [r for i, r in enumerate(train) if i in summaries], {id(train[i]): s for i, s in summaries.items()}


def _streamed_split(path: Path, rows: list[Row], decoders: dict, stats: dict, specs: dict, labels, workers: int):
    from distill_export.data.streaming import RowSource, StreamedModality, StreamedSplit

    source = RowSource(path, [r.line for r in rows], {m: [r.cells[m] for r in rows] for m in decoders},
                       decoders, stats, {m: tuple(spec.shape) for m, spec in specs.items()}, workers)
    index = np.arange(len(rows))
    return StreamedSplit({m: StreamedModality(source, m, index) for m in decoders}, labels)


def _hide_labels(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """label_fraction applies to the labeled training rows; unlabeled rows stay unlabeled."""
    if fraction >= 1.0:
        return labels
    labeled = labeled_rows(labels).nonzero().squeeze(1)
    out = labels.clone()
    out[labeled] = keep_label_fraction(labels[labeled], fraction, seed)
    return out
