"""data/dataset.py's promises, on tiny tensors (issue 25):

- label sampling keeps max(1, round(fraction·n)) labels of every distinct target, only true
  labels, chosen by the seed; a multi-column target (a detector's) is one key; the input is not
  changed; a row counts as labelled when any of its target cells is;
- a split's subset keeps inputs, labels and hidden labels row-aligned (a compact column stays
  compact); splits are never mixed: INT8 calibration reads the calibration split, else the
  first training rows, never validation or test rows;
- the dataset's fingerprint (it keys the teacher-output cache) changes with any training input,
  label or modality name, and with nothing else (not validation or test data, not dict order);
- a modality's kind defaults to its name when that is a kind, else image.
"""

from __future__ import annotations

import pytest
import torch

from distill_export.data.compact import CompactColumn
from distill_export.data.dataset import (IGNORE_INDEX, Dataset, ModalitySpec, Split, keep_label_fraction,
                                         labeled_rows)


def _split(n: int, start: float, hidden: bool = False) -> Split:
    """Rows whose image values start at `start` (so a row's origin can be read back)."""
    image = (torch.arange(n * 4, dtype=torch.float32) + start).reshape(n, 1, 2, 2)
    audio = (torch.arange(n * 3, dtype=torch.float32) - start).reshape(n, 3)
    labels = torch.arange(n) % 3
    return Split({"image": image, "audio": audio}, labels, labels.clone() if hidden else None)


def _dataset(calibration: Split | None = None, **splits) -> Dataset:
    parts = {"train": _split(10, 0), "val": _split(6, 1000), "test": _split(6, 2000), **splits}
    mods = {"image": ModalitySpec("image", (1, 2, 2), 0.5, 0.25), "audio": ModalitySpec("audio", (3,), 0.0, 1.0)}
    return Dataset("tiny", target_names=["a", "b", "c"], modalities=mods, calibration=calibration, **parts)


@pytest.mark.parametrize("seed", range(4))
def test_label_sampling_per_target_row_seeded_and_leaves_its_input(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (60, 2), generator=gen)  # a two-column target: each distinct row is one key
    before = labels.clone()
    for fraction in (0.2, 0.5, 0.99):
        out = keep_label_fraction(labels, fraction, seed)
        assert torch.equal(labels, before)  # the caller's labels are not touched
        kept = labeled_rows(out)
        assert torch.equal(out[kept], labels[kept]) and bool((out[~kept] == IGNORE_INDEX).all())
        for key in torch.unique(labels, dim=0):
            rows = (labels == key).all(1)
            assert int((kept & rows).sum()) == max(1, round(fraction * int(rows.sum()))), (key, fraction)
        assert torch.equal(keep_label_fraction(labels, fraction, seed), out)
    everything = keep_label_fraction(labels, 1.0, seed)
    assert torch.equal(everything, labels) and everything.data_ptr() != labels.data_ptr()  # a copy
    assert torch.equal(keep_label_fraction(labels, 1.5, seed), labels)


def test_a_row_is_labelled_when_any_target_cell_is():
    assert labeled_rows(torch.tensor([3, IGNORE_INDEX, 0])).tolist() == [True, False, True]
    boxes = torch.full((3, 2, 5), IGNORE_INDEX)
    boxes[0, 1, 4] = 7  # one cell of row 0's second box
    boxes[2] = 1
    assert labeled_rows(boxes).tolist() == [True, False, True]
    split = Split({"x": torch.zeros(3, 1)}, boxes)
    assert split.labeled.tolist() == [True, False, True] and len(split) == 3


def test_a_subset_keeps_inputs_labels_and_hidden_labels_row_aligned():
    split = _split(9, 0, hidden=True)
    split.inputs["pixels"] = CompactColumn(torch.arange(9, dtype=torch.uint8).reshape(9, 1), torch.linspace(0, 1, 256))
    index = torch.tensor([7, 2, 5])
    sub = split.subset(index)
    assert len(sub) == 3 and isinstance(sub.inputs["pixels"], CompactColumn)  # a compact column stays compact
    for name, column in split.inputs.items():
        for i, row in enumerate(index.tolist()):
            assert torch.equal(sub.inputs[name][i], column[row]), name
    assert sub.labels.tolist() == [1, 2, 2] and sub.hidden.tolist() == [1, 2, 2]
    assert _split(9, 0).subset(index).hidden is None


def test_calibration_reads_the_calibration_split_else_training_rows_never_val_or_test():
    plain = _dataset()
    assert plain.num_outputs == 3
    assert torch.equal(plain.calibration_rows("image", 4), plain.train.inputs["image"][:4])
    assert torch.equal(plain.calibration_rows("audio", 50), plain.train.inputs["audio"])  # capped at the split
    calib = _split(5, 500)
    own = _dataset(calibration=calib)
    assert torch.equal(own.calibration_rows("image", 3), calib.inputs["image"][:3])
    assert torch.equal(own.calibration_rows("image", 99), calib.inputs["image"])
    empty = _dataset(calibration=_split(0, 500))  # an empty calibration split: the training rows
    assert torch.equal(empty.calibration_rows("audio", 2), empty.train.inputs["audio"][:2])
    for ds in (plain, own, empty):
        rows = ds.calibration_rows("image", 100)
        assert bool((rows < 1000).all()), "calibration read validation or test rows"


def test_the_fingerprint_follows_training_data_only():
    base = _dataset().fingerprint()
    assert base == _dataset().fingerprint() and len(base) == 64
    other_eval = _dataset(val=_split(6, 3000), test=_split(4, 4000))
    assert other_eval.fingerprint() == base  # validation and test data do not key the teacher cache
    flipped = _dataset()
    flipped.train.inputs = dict(reversed(list(flipped.train.inputs.items())))
    assert flipped.fingerprint() == base  # the order of the modalities does not matter
    changed = []
    for change in ("input", "label", "name", "audio"):
        ds = _dataset()
        if change == "input":
            ds.train.inputs["image"][9, 0, 1, 1] += 1
        elif change == "label":
            ds.train.labels[0] = 2
        elif change == "name":
            ds.train.inputs["sound"] = ds.train.inputs.pop("audio")
        else:
            ds.train.inputs["audio"][0, 0] += 0.5
        changed.append(ds.fingerprint())
    assert base not in changed and len(set(changed)) == 4
    strided = _dataset()
    strided.train.inputs["image"] = strided.train.inputs["image"].transpose(2, 3).contiguous().transpose(2, 3)
    assert strided.fingerprint() == base  # the values, not their memory layout


def test_a_streamed_or_compact_column_is_fingerprinted_by_its_own_recipe():
    class Streamed:
        def __init__(self, tag):
            self.tag = tag

        def fingerprint(self):
            return f"rows-{self.tag}"

    a, b = _dataset(), _dataset()
    a.train.inputs["image"], b.train.inputs["image"] = Streamed(1), Streamed(1)
    assert a.fingerprint() == b.fingerprint()
    b.train.inputs["image"] = Streamed(2)
    assert a.fingerprint() != b.fingerprint()


def test_a_modality_kind_defaults_to_its_name_else_image():
    for kind in ("image", "audio", "text", "vector", "video"):
        assert ModalitySpec(kind, (1,), 0.0, 1.0).kind == kind
    assert ModalitySpec("rgb", (3, 8, 8), 0.0, 1.0).kind == "image"
    assert ModalitySpec("rgb", (3,), 0.0, 1.0, kind="vector").kind == "vector"
    assert ModalitySpec("x", (3,), 0.0, 1.0).layout == "NCHW"
