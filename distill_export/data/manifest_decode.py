"""Decoding a manifest's cells: one Decoder per modality (image, audio, text, and the two of a
video column: the clip and its target frame, which share one ClipReader, data/video.py), and
the streaming choice: decode the training rows into memory, or once up front and then per batch
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
    """Decodes one modality column; remembers what it needs to finish (image size/channels).
    With a ClipReader (`clip`) it reads a video cell: kind "video" -> the clip (T, C, H, W),
    kind "image" -> the clip's target frame (C, H, W)."""

    def __init__(self, column: str, kind: str, config, base: Path, clip=None):
        self.column, self.kind, self.base, self.clip = column, kind, base, clip
        self.cell_column = column  # the manifest column its cells come from (a frame: its video column)
        size = int(getattr(config, "image_size", 0) or 0)
        self.size: tuple[int, int] | None = (size, size) if size > 0 else None
        self.mode = str(getattr(config, "image_mode", "auto")).lower()
        self.text_encoder = str(getattr(config, "text_encoder", "hashed")).lower()
        self.sample_rates: dict[int, int] = {}
        self.any_color = False
        self.float_scale: float | None = None  # mode-F images: 1 or 255 for the column (fix_float_scales)
        from distill_export.data.audio import MAX_AUDIO_SECONDS

        # data.max_audio_seconds where the config declares it, else the default limit
        self.max_audio_seconds = float(getattr(config, "max_audio_seconds", None) or MAX_AUDIO_SECONDS)

    def path(self, cell: str) -> Path:
        if self.clip is not None:
            cell = loaders.split_cell(cell)[0]
        p = Path(os.path.expanduser(cell))
        return p if p.is_absolute() else self.base / p

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) the images or frames decode to (None until the first one decodes, when automatic)."""
        return self.clip.size if self.clip is not None else self.size

    def source_size(self, cell: str) -> tuple[int, int]:
        """(H, W) of the cell's image or frame as the file holds it (box labels are in these pixels)."""
        if self.clip is not None:
            return self.clip.source_size(self.path(cell))
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.path(cell)) as im:  # the header only
                return loaders.displayed_size(im)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read the size of {self.path(cell)}: {str(exc)[:100]}") from None

    def decode(self, cell: str, compact: bool = False) -> np.ndarray | str:
        """The cell's array. compact: 8-bit pixels (a clip's, an 8-bit image's) as uint8, 1/4 of
        the memory (the in-memory path scales them, data/compact.py), else float32 in [0, 1]."""
        try:
            return self._decode(cell, compact)
        except OSError as exc:  # e.g. a path longer than the file system allows (ENAMETOOLONG)
            shown = cell if len(cell) <= 80 else cell[:77] + "..."
            raise DataError(f"{self.column} {shown!r}: {exc.strerror or type(exc).__name__}") from None

    def _decode(self, cell: str, compact: bool = False) -> np.ndarray | str:
        if self.clip is not None:
            from distill_export.data.video import to_float

            clip, frame = self.clip.read_uint8(self.path(cell), loaders.split_cell(cell)[1])
            x = clip if self.kind == "video" else frame
            self.any_color |= x.shape[-3] == 3
            return x if compact else to_float(x)
        if self.kind == "image":
            im = loaders.read_image(self.path(cell))
            if self.size is None:  # auto, when fix_auto_sizes did not run: this image's size
                self.size = auto_size(im.height, im.width, self.path(cell))
            rgb = self.mode == "rgb" or (self.mode == "auto" and not loaders.is_grayscale(im))
            self.any_color |= rgb
            return loaders.image_to_array(im, self.size, rgb, compact, self.float_scale)
        if self.kind == "audio":
            x, sr = loaders.load_audio(self.path(cell), DEMO_AUDIO_SPEC, max_seconds=self.max_audio_seconds)
            self.sample_rates[sr] = self.sample_rates.get(sr, 0) + 1
            return x
        if self.text_encoder == "wordllama":
            return cell  # embedded in one batch in finish()
        return loaders.hash_text(cell)

    def finish(self, values: list) -> list[np.ndarray]:
        """Make every row's array the same shape (gray -> RGB when any image is in color)."""
        if self.kind in ("image", "video") and self.any_color:
            return [to_color(v) for v in values]
        if self.kind == "text" and self.text_encoder == "wordllama":
            return list(loaders.sentence_embeddings(values))
        return values

    @property
    def final_kind(self) -> str:
        return "vector" if self.kind == "text" and self.text_encoder == "wordllama" else self.kind


def to_color(x: np.ndarray) -> np.ndarray:
    """A gray image (1, H, W) or clip (T, 1, H, W) repeated to 3 channels; colour ones as they are."""
    return np.repeat(x, 3, axis=-3) if x.shape[-3] == 1 else x


def frame_modality(column: str) -> str:
    """The name of a video column's target-frame modality: the "video" part of its name becomes
    "image" (video -> image, front_video -> front_image), else "<column>_image"."""
    parts = column.split("_")
    low = [p.lower() for p in parts]
    if "video" in (low[0], low[-1]):
        i = 0 if low[0] == "video" else len(parts) - 1
        return "_".join(parts[:i] + ["image"] + parts[i + 1:])
    return f"{column}_image"


def make_decoders(modalities: list[str], kinds: dict[str, str], rows: list[Row], config, base: Path) -> dict:
    """One Decoder per modality; a video column adds its target-frame modality (next to it in
    the order, same cells). Adds the frame columns to `modalities`, `kinds` and every row's cells."""
    from distill_export.data.video import ClipReader

    decoders = {}
    for m in list(modalities):
        if kinds[m] != "video":
            decoders[m] = Decoder(m, kinds[m], config, base)
            continue
        frame = frame_modality(m)
        if frame in modalities:
            raise DataError(f"video column {m!r} gives a target-frame modality {frame!r}, and the manifest "
                            f"already has a column {frame!r}: rename one")
        size = int(getattr(config, "image_size", 0) or 0)
        reader = ClipReader(int(getattr(config, "clip_frames", 5)), (size, size) if size > 0 else None,
                            str(getattr(config, "image_mode", "auto")).lower())
        decoders[m] = Decoder(m, "video", config, base, clip=reader)
        decoders[frame] = Decoder(frame, "image", config, base, clip=reader)
        decoders[frame].cell_column = m
        modalities.insert(modalities.index(m) + 1, frame)
        kinds[frame] = "image"
        for row in rows:
            row.cells[frame] = row.cells[m]
    return decoders


# data.image_size=0 (auto) takes the first image's size (its header, before any decoding); a
# first image larger than this on a side is refused: every row would be decoded at its size.
AUTO_MAX_SIDE = 1024


def auto_size(height: int, width: int, source) -> tuple[int, int]:
    if max(height, width) > AUTO_MAX_SIDE:
        raise DataError(f"data.image_size=0 (auto) takes the first image's size, and {source} is {width}x{height}, "
                        f"more than {AUTO_MAX_SIDE} px a side: set data.image_size (e.g. 224) to resize every image")
    return height, width


def fix_auto_sizes(path: Path, rows: list[Row], decoders: dict) -> None:
    """data.image_size=0: every image column's size from its first image whose header reads (in row
    order; a row whose header fails is left to the decode, which refuses it), before any decoding."""
    for m, dec in decoders.items():
        if dec.kind != "image" or dec.clip is not None or dec.size is not None:
            continue
        for row in rows:
            try:
                with loaders.open_image_header(dec.path(row.cells[m])) as im:
                    h, w = loaders.displayed_size(im)
            except (DataError, OSError):
                continue
            try:
                dec.size = auto_size(h, w, dec.path(row.cells[m]))
            except DataError as exc:
                raise DataError(f"{path}:{row.line}: {exc}") from None
            break


# Formats PIL never opens as mode F: their rows need no look at the header for the float scale
# (a float TIFF named .png is still checked against the column's scale when it decodes).
NEVER_FLOAT = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}


def fix_float_scales(rows: list[Row], decoders: dict) -> None:
    """Mode-F (32-bit float) images: one scale per image column, from the range of all of its
    mode-F images in every split (data/loaders.py): /255 when any lies above 1, else as they are.
    Each such image is read once more, its min and max kept, nothing else; a row that does not read
    or lies outside [0, 255] is left to the decode, which refuses it naming the row."""
    for m, dec in decoders.items():
        if dec.kind != "image" or dec.clip is not None:
            continue
        top = None
        for row in rows:
            path = dec.path(row.cells[m])
            if path.suffix.lower() in NEVER_FLOAT:
                continue
            try:
                with loaders.open_image_header(path) as im:
                    if im.mode != "F":
                        continue
                lo, hi = loaders.float_range(np.asarray(loaders.read_image(path)), path)
            except (DataError, OSError):
                continue
            if lo >= 0 and hi <= 255:
                top = hi if top is None else max(top, hi)
        if top is not None:
            dec.float_scale = loaders.float_scale_of(top)


def held_bytes(decoder, value) -> int:
    """Bytes one decoded row of this column takes in memory: an 8-bit image's uint8 (its rows
    are held compact), a clip's float32, the array's own size else."""
    a = np.asarray(value)
    if decoder.clip is not None:
        return a.size * 4
    return a.nbytes


def choose_streaming(config, path: Path, rows: list[Row], decoders: dict) -> bool:
    """data.streaming on/off, or auto: stream the training split when holding it in memory would
    take more than data.stream_above_mb (estimated from the first readable row: uint8 for an 8-bit
    image, 4x that for a 16-bit or float one). Logged either way."""

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
    row_bytes = {}
    for m, d in decoders.items():  # in row order, as the in-memory decode goes
        for row in rows:
            try:
                row_bytes[m] = held_bytes(d, d.decode(row.cells[m], compact=True))
                break
            except DataError:
                continue
    if len(row_bytes) < len(decoders):
        return False  # a column where nothing decodes: the in-memory path lists every bad row
    for d in decoders.values():
        d.sample_rates.clear()
    mb = len(train) * sum(row_bytes.values()) / 2**20
    limit = int(getattr(config, "stream_above_mb", 2048))
    streaming = mode == "on" or mb > limit
    why = "data.streaming=on" if mode == "on" else f"{'over' if streaming else 'within'} data.stream_above_mb={limit}"
    console.print(f"{path}: {len(train)} training rows, ~{mb:.0f} MB held decoded ({why}): "
                  + (("streamed from disk in DataLoader workers" if int(getattr(config, "num_workers", 0) or 0) else
                      "streamed from disk, decoded per batch in this process (data.num_workers 0)")  # 75th A2
                     if streaming else "decoded into memory"))
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
