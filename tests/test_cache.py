"""Teacher-output cache: miss, hit, invalidation by teacher / data / preprocessing, labels not
in the key, the shared cache folder, augmentation that bypasses it, a teacher key that survives
saving the same teacher twice, batch-wise writes that leave nothing half-written, and reads that
are memory-mapped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _byo_fixtures import synthetic_dataset
from distill_export.config import RunConfig
from distill_export.data.augment import random_shift
from distill_export.rundir import RunDir
from distill_export.teacher_cache import CACHE_DIR, INDEX_FILE, SPOT_ROWS, teacher_targets


class CountingTeacher:
    """forward(inputs) -> (features, logits), counting the rows it has seen."""

    def __init__(self, scale: float = 1.0):
        self.rows = 0
        self.scale = scale

    def __call__(self, inputs):
        x = torch.cat([v.flatten(1) for _, v in sorted(inputs.items())], 1)
        self.rows += x.shape[0]
        return x[:, :4] * self.scale, x[:, :3] * self.scale


@pytest.fixture
def run(tmp_path):
    rd = RunDir.create(tmp_path / "run")
    rd.file("teacher.pt").write_bytes(b"teacher v1")  # what the run's teacher hash is taken from
    return rd


def targets(run, data, teacher, config=None, view=()):
    config = config or RunConfig()
    return teacher_targets(config, run, data, teacher, torch.device("cpu"), ["audio", "image"], view)


def test_miss_then_hit(run):
    data = synthetic_dataset()
    t = CountingTeacher()
    first = targets(run, data, t)
    assert first.info["status"] == "miss" and t.rows == len(data.train)
    assert run.file(CACHE_DIR).joinpath(INDEX_FILE).is_file()
    second = targets(run, data, t)
    # no second pass over the rows: the teacher sees only the SPOT_ROWS a hit is checked against
    assert second.info["status"] == "hit" and t.rows == len(data.train) + SPOT_ROWS
    assert torch.equal(first.logits, second.logits) and torch.equal(first.feats, second.feats)
    assert first.online is None and first.augment is None


def test_invalidated_by_teacher(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    run.file("teacher.pt").write_bytes(b"teacher v2")
    again = targets(run, data, CountingTeacher(scale=2.0))
    assert again.info == {"status": "miss", "reason": "it was made for another teacher", "path": str(run.file(CACHE_DIR))}
    assert torch.equal(again.logits, CountingTeacher(2.0)(data.train.inputs)[1])


def test_invalidated_by_data(run):
    targets(run, synthetic_dataset(seed=0), CountingTeacher())
    again = targets(run, synthetic_dataset(seed=1), CountingTeacher())
    assert again.info["reason"] == "it was made for other training inputs"


def test_invalidated_by_preprocessing(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    data.modalities["image"] = dataclasses.replace(data.modalities["image"], mean=0.5)  # other normalisation
    assert targets(run, data, CountingTeacher()).info["reason"] == "it was made for other preprocessing"
    assert targets(run, data, CountingTeacher(), view=("audio",)).info["reason"] == "it was made for other preprocessing"


def test_labels_are_not_part_of_the_key(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    data.train.labels[:5] = -100  # another label fraction: same teacher outputs
    assert targets(run, data, CountingTeacher()).info["status"] == "hit"


def test_shared_cache_dir_across_runs(tmp_path, run):
    data = synthetic_dataset()
    cfg = RunConfig()
    cfg.distill.teacher_cache_dir = str(tmp_path / "shared")
    targets(run, data, CountingTeacher(), cfg)
    other = RunDir.create(tmp_path / "run2")
    other.file("teacher.pt").write_bytes(b"teacher v1")  # the same teacher, another run
    t = CountingTeacher()
    assert targets(other, data, t, cfg).info["status"] == "hit" and t.rows == SPOT_ROWS


def test_disabled_and_augmented(run):
    data = synthetic_dataset()
    cfg = RunConfig()
    cfg.distill.teacher_cache = False
    assert targets(run, data, CountingTeacher(), cfg).info == {"status": "disabled"}
    assert not run.file(CACHE_DIR).exists()
    cfg.distill.augment = "shift"
    t = CountingTeacher()
    out = targets(run, data, t, cfg)
    assert out.info["status"] == "not used" and out.logits is None and out.augment is random_shift
    rows = torch.tensor([0, 3])
    x = torch.zeros(2, 1, 8, 8)
    _, logits = out.online(rows, x)  # the teacher sees the student's (augmented) input
    expected = CountingTeacher()({"audio": data.train.inputs["audio"][rows], "image": x})[1]
    assert torch.equal(logits, expected)


def test_random_shift_moves_pixels_only():
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = random_shift(x)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), x.sum((1, 2, 3)))
    moved = [tuple(int(i) for i in (img[0] == 1).nonzero()[0]) for img in y]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in moved) and len(set(moved)) > 1


@pytest.mark.parametrize("damage", ["garbage index", "truncated array"])
def test_corrupt_cache_file_is_a_miss_with_its_reason(run, damage):
    data = synthetic_dataset()
    expected = targets(run, data, CountingTeacher()).logits.clone()  # a copy: the tensor maps the file we damage
    folder = run.file(CACHE_DIR)
    if damage == "garbage index":
        (folder / INDEX_FILE).write_bytes(b"\x00not an index")
    else:
        blob = (folder / "logits.npy").read_bytes()
        (folder / "logits.npy").write_bytes(blob[: len(blob) // 2])
    t = CountingTeacher()
    again = targets(run, data, t)
    assert again.info["status"] == "miss" and again.info["reason"].startswith("unreadable cache"), again.info
    assert t.rows == len(data.train) and torch.equal(again.logits, expected)  # recomputed, and rewritten
    assert targets(run, data, CountingTeacher()).info["status"] == "hit"


def test_cache_with_the_wrong_row_count_is_a_miss_with_its_reason(run):
    """A folder whose key matches but whose array holds one row fewer (written by hand: the key
    hashes the inputs, so only a damaged or hand-made file can get here)."""
    import json

    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    folder = run.file(CACHE_DIR)
    np.save(folder / "logits.npy", np.load(folder / "logits.npy")[:-1])
    index = json.loads((folder / INDEX_FILE).read_text())
    index["outputs"]["logits"]["bytes"] = (folder / "logits.npy").stat().st_size
    (folder / INDEX_FILE).write_text(json.dumps(index))
    t = CountingTeacher()
    again = targets(run, data, t)
    n = len(data.train)
    assert again.info["status"] == "miss"
    assert again.info["reason"] == f"cache holds {n - 1} rows, the training set has {n}"
    assert t.rows == n and again.logits.shape[0] == n


# ----- the teacher's key: content, not file bytes ----------------------------------------------
def _fusion_teacher(data):
    from distill_export.nets.teacher import FusionTeacher
    from distill_export.train_teacher import teacher_kwargs

    torch.manual_seed(0)
    kwargs = teacher_kwargs(data, 8, 0.0)
    return FusionTeacher(**kwargs).eval(), kwargs


def _save_teacher(net, kwargs, path):
    from distill_export.nets.checkpoint import save_checkpoint

    save_checkpoint(path, net, kind="teacher", arch="fusion_teacher", arch_kwargs=kwargs, meta={"note": "same"})
    return path


def test_same_teacher_saved_twice_keeps_the_key_and_a_changed_weight_misses(tmp_path):
    """torch.save by path names the archive's record folder after the file it writes (as
    checkpoints saved before did): the key hashes the members' content, so two saves of one
    teacher share a cache; one changed weight does not, and the miss names the teacher."""
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.nets.external import teacher_identity

    data = synthetic_dataset()
    net, kwargs = _fusion_teacher(data)
    a = _save_teacher(net, kwargs, tmp_path / "a.pt")
    b = tmp_path / "sub" / "teacher_copy.pt"
    b.parent.mkdir()
    torch.save(load_checkpoint(a), b)  # saved by path: its record folder is "teacher_copy"
    assert a.read_bytes() != b.read_bytes()  # the file bytes differ (record names)...
    assert teacher_identity(a) == teacher_identity(b)  # ...the key does not

    cfg = RunConfig()
    cfg.distill.teacher_cache_dir = str(tmp_path / "shared")
    cfg.teacher.path = str(a)
    run_a = RunDir.create(tmp_path / "run_a")
    assert targets(run_a, data, CountingTeacher(), cfg).info["status"] == "miss"
    cfg.teacher.path = str(b)
    t = CountingTeacher()
    assert targets(RunDir.create(tmp_path / "run_b"), data, t, cfg).info["status"] == "hit" and t.rows == SPOT_ROWS

    cfg.distill.teacher_cache_dir = None  # the run's own folder from here on
    run_c = RunDir.create(tmp_path / "run_c")
    assert targets(run_c, data, CountingTeacher(), cfg).info["status"] == "miss"
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    cfg.teacher.path = str(_save_teacher(net, kwargs, tmp_path / "b_changed.pt"))
    assert targets(run_c, data, CountingTeacher(), cfg).info["reason"] == "it was made for another teacher"


def test_same_export_program_saved_twice_keeps_the_key(tmp_path):
    """.pt2 teachers: two saves (other paths, other example values) hash the same; other weights do not.
    (The program's graph records the example's shapes and memory layout, so those stay the same.)"""
    from distill_export.nets.external import export_teacher_program, teacher_identity

    data = synthetic_dataset()
    net, _ = _fusion_teacher(data)
    a = export_teacher_program(net, {m: v[:2] for m, v in data.train.inputs.items()}, tmp_path / "a.pt2")
    b = export_teacher_program(net, {m: v[3:5].clone() for m, v in data.train.inputs.items()}, tmp_path / "bb.pt2")
    assert teacher_identity(a) == teacher_identity(b)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    c = export_teacher_program(net, {m: v[:2] for m, v in data.train.inputs.items()}, tmp_path / "c.pt2")
    assert teacher_identity(c) != teacher_identity(a)


# ----- storage: batch-wise writes, memory-mapped reads -------------------------------------------
def test_a_teacher_that_fails_mid_pass_leaves_no_cache(run):
    """The arrays are filled batch by batch; a failure half-way leaves no index and no array
    under a final name, so the next run misses cleanly instead of reading half a cache."""
    from distill_export.teacher_cache import CacheKey, cached_outputs

    key = CacheKey("t", "d", "p")
    folder = run.file(CACHE_DIR)

    def failing():
        yield torch.zeros(4, 2), torch.zeros(4, 3)
        raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        cached_outputs(folder, key, 8, failing)
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []

    def batches():  # 3 batches of 4, 4, 2 rows
        for start in (0, 4, 8):
            rows = torch.arange(start, min(start + 4, 10), dtype=torch.float32)[:, None]
            yield rows.repeat(1, 2), rows.repeat(1, 3) * -1

    feats, logits, info = cached_outputs(folder, key, 10, batches)
    assert info["status"] == "miss" and info["reason"] == "no cache file yet"
    assert torch.equal(logits[:, 0], -torch.arange(10.0)) and feats.shape == (10, 2)
    feats2, logits2, info2 = cached_outputs(folder, key, 10, batches)
    assert info2["status"] == "hit" and torch.equal(logits2, logits) and torch.equal(feats2, feats)


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds t's data (Linux /proc/self/maps), else None."""
    addr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5] if len(parts) > 5 else None
    return None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
def test_hits_and_misses_return_memory_mapped_tensors(run):
    """Both the freshly written and the re-read outputs are views of the cache files, not copies
    in memory, so memory does not grow with the row count; indexing rows works as on any tensor."""
    data = synthetic_dataset()
    for _ in range(2):  # miss, then hit
        out = targets(run, data, CountingTeacher())
        assert _mapped_file(out.logits) == str(run.file(CACHE_DIR) / "logits.npy")
        assert _mapped_file(out.feats) == str(run.file(CACHE_DIR) / "features.npy")
        rows = torch.tensor([3, 0, 5])
        assert torch.equal(out.logits[rows], CountingTeacher()(data.train.inputs)[1][rows])
