"""Decoded manifest columns held compactly: rows written into storage allocated once per split
(ColumnStore, no list of arrays stacked at the end), and 8-bit image columns of the training
split held as uint8 (CompactColumn), turned into normalised float32 per batch.

Why: a list of per-row float32 arrays, its stacked copy, a float64 copy for the statistics and
the normalisation's temporaries made the decode peak ~5x the data (issue 24). Held as uint8, a
96x96 RGB row is 27 KB, not 110 KB, and the decode peak is close to what is held.

The float values are the same as before, bit for bit: a byte u becomes
lut[u] = (float32(u) / 255 - mean) / std, computed with the same float32 operations the
in-memory path applied to the whole tensor (tests/test_decode_memory.py checks this).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from distill_export.errors import DataError

CHUNK_ROWS = 256  # rows per pass when converting or summing a stored column


class ColumnStore:
    """One split's decoded rows of one modality, in one array of n_rows allocated at the first row.

    A later row in colour when the array is gray widens it to 3 channels once (a gray row in a
    colour array is repeated); a float row in a uint8 array (a 16-bit image among 8-bit ones)
    converts it to float32 once (u / 255). Strings (text embedded later) are kept as a list."""

    def __init__(self, n_rows: int):
        self.n_rows, self.count = n_rows, 0
        self.array: np.ndarray | list | None = None

    def add(self, value, line: int, name: str) -> int:
        """Write one row; returns its slot."""
        if isinstance(value, str):
            self.array = [] if self.array is None else self.array
            self.array.append(value)
        else:
            value = np.asarray(value)
            if self.array is None:
                self.array = np.empty((self.n_rows, *value.shape), dtype=value.dtype)
            self._fit(value, line, name)
            self.array[self.count] = value if value.dtype == self.array.dtype else value.astype(np.float32) / 255.0
        self.count += 1
        return self.count - 1

    def _fit(self, value: np.ndarray, line: int, name: str) -> None:
        a = self.array
        if a.dtype == np.uint8 and value.dtype != np.uint8:
            self.array = to_unit_float(a, self.count)
        shape = a.shape[1:]
        if value.shape != shape and value.ndim >= 3 and value.shape[-3] == 3 and shape[-3] == 1 \
                and value.shape[:-3] == shape[:-3] and value.shape[-2:] == shape[-2:]:
            self.array = widen(self.array, self.count)  # gray so far, this row in colour
        elif value.shape != shape and not (value.ndim >= 3 and value.shape[-3] == 1 and shape[-3] == 3
                                           and value.shape[-2:] == shape[-2:]):
            raise DataError(f"line {line}: {name} decodes to shape {value.shape}, the split's first row to {shape}")

    def rows(self, slots: list[int]):
        """The array of the rows in `slots` (increasing: compacted in place, no copy)."""
        a = self.array
        if isinstance(a, list):
            return [a[i] for i in slots]
        if a is None:
            return a
        if slots == list(range(len(slots))):
            return a[: len(slots)]
        if all(x < y for x, y in zip(slots, slots[1:])):
            for j, i in enumerate(slots):  # i >= j: moves rows down, never over one still to move
                if i != j:
                    a[j] = a[i]
            return a[: len(slots)]
        return a[slots]


def widen(a: np.ndarray, count: int) -> np.ndarray:
    """A gray array (N, ..., 1, H, W) -> (N, ..., 3, H, W), its first `count` rows repeated."""
    out = np.empty((*a.shape[:-3], 3, *a.shape[-2:]), dtype=a.dtype)
    for i in range(0, count, CHUNK_ROWS):
        out[i : min(i + CHUNK_ROWS, count)] = a[i : min(i + CHUNK_ROWS, count)]  # broadcast 1 -> 3
    return out


def to_unit_float(a: np.ndarray, count: int | None = None) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (float32(u) / 255, as loaders.image_to_array), by chunks."""
    count = len(a) if count is None else count
    out = np.empty(a.shape, dtype=np.float32)
    for i in range(0, count, CHUNK_ROWS):
        out[i : i + CHUNK_ROWS][: count - i] = a[i : min(i + CHUNK_ROWS, count)].astype(np.float32) / 255.0
    return out


def uint8_mean_std(a: np.ndarray) -> tuple[float, float]:
    """(mean, std with ddof=1) in float64 of float32(a) / 255, exactly from a histogram of the bytes:
    no float copy of the column (the float64 copy was 8x the uint8 data)."""
    counts = np.zeros(256, dtype=np.int64)
    flat = a.reshape(-1)
    for i in range(0, flat.size, 1 << 18):  # bincount copies its input to int64: 2 MB at a time
        counts += np.bincount(flat[i : i + (1 << 18)], minlength=256)
    values = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float64)
    n = int(counts.sum())
    mean = float((counts * values).sum() / n)
    var = float((counts * np.square(values - mean)).sum() / max(n - 1, 1))
    std = float(np.sqrt(var))
    return mean, std if std > 0 else 1.0


def normalised_lut(mean: float, std: float) -> torch.Tensor:
    """(256,) float32: byte u -> (float32(u) / 255 - mean) / std, by the same float32 operations
    manifest.py applies to a float column (so a uint8 row gives the float row's exact values)."""
    unit = torch.from_numpy(np.arange(256, dtype=np.float32) / 255.0)
    return (unit.float() - mean) / std


class CompactColumn:
    """(N, C, H, W) normalised float32 rows held as uint8 bytes and a 256-entry table.

    Duck-types what the pipeline does with a training input tensor: len(), .shape, .dtype,
    x[rows] (index tensor, slice or int: a float32 tensor), .take(rows) (still compact),
    .to(device) (the bytes move), .fingerprint(). Anything else (a torch function, .numpy(),
    .mean(), ...) sees the whole column as float32, decoded for that call."""

    def __init__(self, data: torch.Tensor, lut: torch.Tensor):
        self.data, self.lut = data, lut

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.lut.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, rows) -> torch.Tensor:
        return self.lut[self.data[rows].long()]

    def take(self, rows) -> "CompactColumn":
        return CompactColumn(self.data[rows], self.lut)

    def to(self, device=None, *args, **kwargs) -> "CompactColumn":
        if isinstance(device, torch.dtype) or args or kwargs:
            return self.float().to(device, *args, **kwargs)
        return CompactColumn(self.data.to(device), self.lut.to(device))

    def float(self) -> torch.Tensor:
        return self[:]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"compact|{tuple(self.data.shape)}|".encode())
        h.update(self.lut.detach().cpu().numpy().tobytes())
        h.update(self.data.detach().cpu().contiguous().numpy())
        return h.hexdigest()

    def __array__(self, dtype=None, copy=None):
        x = self.float().cpu().numpy()
        return x if dtype is None else x.astype(dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def plain(v):
            if isinstance(v, CompactColumn):
                return v.float()
            if isinstance(v, (list, tuple)):
                return type(v)(plain(x) for x in v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return func(*plain(args), **plain(kwargs or {}))

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("data", "lut"):
            raise AttributeError(name)
        return getattr(self.float(), name)

