"""Streaming manifest data: the training split decoded per sample, in DataLoader workers.

A manifest too large to decode into RAM (data.streaming: auto picks this above
data.stream_above_mb of training data held in memory) keeps only its rows' cells in memory. The
training split's inputs are then `StreamedModality` columns: indexing one decodes those rows
(resize to data.image_size, gray/RGB, normalise with the training-set statistics the up-front
scan computed), and `batch_fetcher` feeds train_loop from a DataLoader whose batch sampler
yields exactly train_loop's row-index batches: the same batches, in the same order, for the
same seed as the in-memory path (tests/test_streaming.py). Validation and test splits stay in
memory (they are read every epoch).

The up-front scan decodes every training row once in the workers without keeping it: bad rows
are reported as file:line before any training, and it accumulates per-row sums for the
normalisation statistics. A row that fails to decode later (the file changed since) is a
DataError naming manifest:line; it is caught in the worker and raised in the main process,
so the message is one line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill_export.data.dataset import Split
from distill_export.errors import DataError


@dataclass
class StreamSettings:
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = True

    @classmethod
    def from_config(cls, data_config, device) -> "StreamSettings":
        workers = int(getattr(data_config, "num_workers", 0) or 0)
        pin = str(getattr(data_config, "pin_memory", "auto"))
        return cls(workers, pin == "true" or (pin == "auto" and device.type == "cuda"),
                   bool(getattr(data_config, "persistent_workers", True)))


class RowSource:
    """The cells of one split's rows and how to decode them (picklable: sent to each worker)."""

    def __init__(self, manifest: Path, lines: list[int], cells: dict[str, list[str]], decoders: dict,
                 stats: dict[str, tuple[float, float]], shapes: dict[str, tuple[int, ...]], workers: int = 0):
        self.manifest, self.lines, self.cells = manifest, lines, cells
        self.decoders, self.stats, self.shapes = decoders, stats, shapes
        self.workers = workers  # data.num_workers: also for whole-split passes (train.predict)

    def __len__(self) -> int:
        return len(self.lines)

    def decode(self, i: int, modality: str) -> torch.Tensor:
        """Row i of this modality, as the in-memory path holds it: (C, H, W) float32, normalised
        (token ids: int64, as they are)."""
        dec = self.decoders[modality]
        try:
            x = dec.decode(self.cells[modality][i])
        except DataError as exc:
            raise DataError(f"{self.manifest}:{self.lines[i]}: {exc}") from None
        if dec.kind in ("image", "video") and dec.any_color and x.shape[-3] == 1:
            x = np.repeat(x, 3, axis=-3)  # gray -> RGB when any image is in color (as finish() does)
        if tuple(x.shape) != self.shapes[modality]:
            raise DataError(f"{self.manifest}:{self.lines[i]}: {modality} decodes to shape {tuple(x.shape)}, "
                            f"the other rows to {self.shapes[modality]}")
        t = torch.from_numpy(np.ascontiguousarray(x))
        if dec.final_kind == "text":
            return t
        mean, std = self.stats[modality]
        return (t.float() - mean) / std  # the same float32 ops as the in-memory path, per sample

    def fingerprint(self) -> str:
        """Keys the teacher-output cache: the rows' cells, file sizes and times, and the stats."""
        h = hashlib.sha256()
        for m in sorted(self.cells):
            h.update(f"{m}|{self.stats[m]}|{self.shapes[m]}|".encode())
            for cell in self.cells[m]:
                h.update(cell.encode() + b"\0")
                p = self.decoders[m].path(cell) if self.decoders[m].kind != "text" else None
                if p is not None and p.is_file():
                    st = os.stat(p)
                    h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()


class StreamedModality:
    """One modality column of a streamed split: (N, *shape) that decodes on indexing.

    Duck-types what the pipeline does with an input tensor: len(), .shape, x[rows] (rows: an
    index tensor, a slice or an int) and .to(device) (where decoded batches are put)."""

    def __init__(self, source: RowSource, modality: str, index: np.ndarray, device=None):
        self.source, self.modality, self.index = source, modality, index
        self.device = torch.device("cpu") if device is None else device

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.source.shapes[self.modality])

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device) -> "StreamedModality":
        return StreamedModality(self.source, self.modality, self.index, torch.device(device))

    def take(self, rows) -> "StreamedModality":
        """The rows `rows` (an index tensor), still undecoded."""
        rows = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        return StreamedModality(self.source, self.modality, self.index[rows], self.device)

    def __getitem__(self, rows) -> torch.Tensor:
        picked = self.index[rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows]
        if np.ndim(picked) == 0:
            return self.source.decode(int(picked), self.modality).to(self.device)
        return torch.stack([self.source.decode(int(i), self.modality) for i in picked]).to(self.device)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.source.fingerprint()}|{self.modality}|".encode()
                              + self.index.astype(np.int64).tobytes()).hexdigest()


class StreamedSplit(Split):
    """A Split whose inputs are StreamedModality columns; subset() keeps them undecoded."""

    def subset(self, index: torch.Tensor) -> "StreamedSplit":
        return StreamedSplit({k: v.take(index) for k, v in self.inputs.items()}, self.labels[index])


def is_streamed(x) -> bool:
    if isinstance(x, dict):
        return any(isinstance(v, StreamedModality) for v in x.values())
    return isinstance(x, StreamedModality)


# ----- the DataLoader side -------------------------------------------------------------------
@dataclass
class _Failed:
    message: str


def worker_augment(name: str, shape: tuple[int, ...]):
    """The per-sample form of distill.augment (data/augment.py), run in the workers with
    torchvision.transforms.v2: "shift" = pad MAX_SHIFT px edge-replicated, crop back at a random
    place, i.e. a translation by up to ±MAX_SHIFT px, the batch transform's distribution."""
    from distill_export.data.augment import MAX_SHIFT

    if name in ("none", "", None):
        return None
    if name == "shift":
        from torchvision.transforms import v2

        return v2.RandomCrop(tuple(shape[-2:]), padding=MAX_SHIFT, padding_mode="edge")
    if name == "crop":
        from distill_export.data.augment import crop_transform

        return crop_transform(shape[-2:])
    raise ValueError(f"unknown augmentation {name!r} (none, shift, crop)")


class _Rows(torch.utils.data.Dataset):
    """Position i of the (sub)split -> {key: decoded tensor} or _Failed (never raises in a worker)."""

    def __init__(self, columns: dict[str, StreamedModality], transforms: dict | None = None):
        self.columns = {key: (c.source, c.modality, c.index) for key, c in columns.items()}
        self.transforms = transforms or {}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))[2])

    def __getitem__(self, i: int):
        try:
            out = {key: src.decode(int(index[i]), m) for key, (src, m, index) in self.columns.items()}
        except DataError as exc:
            return _Failed(str(exc))
        for key, transform in self.transforms.items():
            out[key] = transform(out[key])
        return out


def _collate(samples: list):
    bad = next((s for s in samples if isinstance(s, _Failed)), None)
    if bad is not None:
        return bad
    return {m: torch.stack([s[m] for s in samples]) for m in samples[0]}


class _EpochBatches(torch.utils.data.Sampler):
    """The batch sampler: this epoch's row-index batches, set by train_loop before each epoch
    (the sampler lives in the main process, so persistent workers see each new epoch's order)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def in_order(columns, n_rows: int, batch_size: int):
    """Decoded batches of rows 0..n_rows-1 in order (a whole-split pass: the teacher's outputs),
    in the data's workers."""
    first = next(iter(columns.values())) if isinstance(columns, dict) else columns
    batches = [torch.arange(s, min(s + batch_size, n_rows)) for s in range(0, n_rows, batch_size)]
    settings = StreamSettings(num_workers=first.source.workers, persistent_workers=False)
    return batch_fetcher(columns, settings)(batches)


def batch_fetcher(columns, settings: StreamSettings, augment=None):
    """train_loop's `fetch` for streamed inputs: batches of row indices -> decoded batches.

    columns: one StreamedModality (yields a tensor (B, ...)) or a dict of them (yields a dict).
    augment: a per-sample transform of a single column, applied in the workers.
    Under DDP each rank fetches only its shard of every global batch."""
    single = not isinstance(columns, dict)
    cols = {"x": columns} if single else dict(columns)
    if augment is not None and not single:
        raise ValueError("worker augmentation applies to a single streamed column")
    device = next(iter(cols.values())).device
    sampler = _EpochBatches()
    workers = settings.num_workers
    loader = torch.utils.data.DataLoader(
        _Rows(cols, {"x": augment} if augment is not None else None), batch_sampler=sampler, num_workers=workers, collate_fn=_collate,
        pin_memory=settings.pin_memory, persistent_workers=settings.persistent_workers and workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )

    def fetch(batches: list[torch.Tensor]):
        sampler.batches = [b.tolist() for b in batches]
        for batch in loader:
            if isinstance(batch, _Failed):
                raise DataError(batch.message)
            batch = {m: v.to(device, non_blocking=settings.pin_memory) for m, v in batch.items()}
            yield batch["x"] if single else batch

    return fetch


# ----- the up-front scan ---------------------------------------------------------------------
class _ScanRows(torch.utils.data.Dataset):
    """Row i -> (i, problem or None, {modality: (sum, sum of squares, count, shape, sample rate)})."""

    def __init__(self, cells: list[dict[str, str]], decoders: dict):
        self.cells, self.decoders = cells, decoders

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int):
        summary = {}
        for m, dec in self.decoders.items():
            before = dict(dec.sample_rates)
            try:
                x = dec.decode(self.cells[i][m])
            except DataError as exc:
                return i, str(exc), None
            sr = next((r for r, n in dec.sample_rates.items() if n != before.get(r, 0)), None)
            if dec.final_kind == "text":
                summary[m] = (0.0, 0.0, 0, tuple(np.shape(x)), sr)
            else:
                xd = np.asarray(x, dtype=np.float64)
                summary[m] = (float(xd.sum()), float(np.square(xd).sum()), int(xd.size), tuple(x.shape), sr)
        return i, None, summary


def scan_rows(cells: list[dict[str, str]], decoders: dict, num_workers: int):
    """Decode every row once in the workers, keeping only per-row summaries.

    Returns ({row position: problem}, {row position: summary}). Also marks decoders whose
    images are in color (any_color) and counts their sample rates, as the in-memory decode does."""
    loader = torch.utils.data.DataLoader(_ScanRows(cells, decoders), batch_size=None, num_workers=num_workers,
                                         prefetch_factor=4 if num_workers > 0 else None)
    problems, summaries = {}, {}
    for i, problem, summary in loader:
        if problem is not None:
            problems[i] = problem
            continue
        summaries[i] = summary
        for m, (_, _, _, shape, sr) in summary.items():
            dec = decoders[m]
            if dec.kind in ("image", "video") and int(shape[-3]) == 3:
                dec.any_color = True
            if sr is not None and num_workers > 0:  # the main process's decoders counted it already otherwise
                dec.sample_rates[sr] = dec.sample_rates.get(sr, 0) + 1
    return problems, summaries


def stats_from_summaries(summaries: list[dict], decoders: dict) -> tuple[dict, dict]:
    """(mean, std with ddof=1) and the sample shape per modality over the training rows, counting a
    gray image thrice when the column is RGB (it is repeated to 3 channels, as in memory)."""
    stats, shapes = {}, {}
    for m, dec in decoders.items():
        first = tuple(int(v) for v in summaries[0][m][3])
        if dec.final_kind == "text":
            stats[m], shapes[m] = (0.0, 1.0), first
            continue
        s = sq = n = 0.0
        for summary in summaries:
            row_s, row_sq, row_n, shape, _ = summary[m]  # shape: a list after the DataLoader
            k = 3 if dec.kind in ("image", "video") and dec.any_color and int(shape[-3]) == 1 else 1
            s, sq, n = s + k * row_s, sq + k * row_sq, n + k * row_n
        mean = s / n
        var = max((sq - n * mean * mean) / max(n - 1, 1), 0.0)
        std = float(np.sqrt(var))
        stats[m] = (float(mean), std if std > 0 else 1.0)
        shapes[m] = ((*first[:-3], 3, *first[-2:]) if dec.kind in ("image", "video") and dec.any_color else first)
    return stats, shapes

