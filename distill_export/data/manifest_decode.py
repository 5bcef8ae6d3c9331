"""Decoding a manifest's cells: one Decoder per modality column (image, audio, text), and the
streaming choice: decode the training rows into memory, or once up front and then per batch
in DataLoader workers (data/streaming.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distill_export.data import loaders
from distill_export.data.audio import DEMO_AUDIO_SPEC
from distill_export.data.manifest_rows import Problem, Row, console
from distill_export.errors import DataError


class Decoder:
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


def choose_streaming(config, path: Path, rows: list[Row], decoders: dict) -> bool:
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


def scan_train_rows(config, rows: list[Row], decoders: dict, problems: list[Problem]):
    """Decode every training row once (in data.num_workers workers) without keeping it: the rows
    that decode and {id(row): per-row summary} for the normalisation statistics."""
    from distill_export.data.streaming import scan_rows

    train = [r for r in rows if r.split == "train"]
    bad, summaries = scan_rows([r.cells for r in train], decoders, int(getattr(config, "num_workers", 0) or 0))
    for i, message in bad.items():
        problems.append(Problem(train[i].line, message))
    return [r for i, r in enumerate(train) if i in summaries], {id(train[i]): s for i, s in summaries.items()}


def streamed_split(path: Path, rows: list[Row], decoders: dict, stats: dict, specs: dict, labels, workers: int):
    from distill_export.data.streaming import RowSource, StreamedModality, StreamedSplit

    source = RowSource(path, [r.line for r in rows], {m: [r.cells[m] for r in rows] for m in decoders},
                       decoders, stats, {m: tuple(spec.shape) for m, spec in specs.items()}, workers)
    index = np.arange(len(rows))
    return StreamedSplit({m: StreamedModality(source, m, index) for m in decoders}, labels)
