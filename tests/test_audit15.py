"""Fifteenth hostile audit (issue 24; docs/reliability.md, "Seventeenth round"): 1 bad case.
- B1: a teacher-output cache edited past the first rows (rows 900-999 of 1,000) was a "cache
  hit", and a hinton student trained on the edited values; the index now records each array's
  sha256, checked on every read. Its arguable case, fixed too: index.json naming a file outside
  the cache folder was read."""

from __future__ import annotations

import json

import numpy as np
import torch

from distill_export import teacher_cache

KEY = teacher_cache.CacheKey(teacher="t", data="d", preprocessing="p")
ROWS = 1000


def _fill(folder, logits):
    feats = torch.zeros(ROWS, 2)
    return teacher_cache.cached_outputs(folder, KEY, ROWS, lambda: iter([(feats, logits)]),
                                        first_rows=lambda: (feats[:8], logits[:8]))


def test_b1_an_edit_past_the_checked_rows_is_a_miss_and_is_recomputed(tmp_path):
    folder = tmp_path / "teacher_outputs"
    logits = torch.randn(ROWS, 10, generator=torch.Generator().manual_seed(0))
    assert _fill(folder, logits)[2]["status"] == "miss"
    edited = np.load(folder / "logits.npy")
    edited[900:] = np.flip(edited[900:], 1)  # finite, same shape and dtype, past the first rows
    np.save(folder / "logits.npy", edited)
    _, again, info = _fill(folder, logits)
    assert info["status"] == "miss" and info["reason"] == \
        "logits.npy changed after it was written (its sha256 is not the index's)", info
    assert torch.equal(again, logits)  # recomputed from the teacher and rewritten
    assert _fill(folder, logits)[2]["status"] == "hit"


def test_b1_an_index_naming_a_file_elsewhere_is_a_miss(tmp_path):
    folder = tmp_path / "teacher_outputs"
    logits = torch.randn(ROWS, 10, generator=torch.Generator().manual_seed(0))
    _fill(folder, logits)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "logits.npy").write_bytes((folder / "logits.npy").read_bytes())  # the same bytes: only the path differs
    index = json.loads((folder / "index.json").read_text())
    index["outputs"]["logits"]["file"] = "../elsewhere/logits.npy"
    (folder / "index.json").write_text(json.dumps(index))
    stored, why = teacher_cache.load(folder, KEY, ROWS, needs=("logits",))
    assert stored is None and why == "index.json names '../elsewhere/logits.npy' for the logits, not logits.npy in its folder"
