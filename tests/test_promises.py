"""Behaviour-level tests of the promises issue 25 lists, one property per promise area, each written
so that a whole class of plausible bugs fails it (not one test per mutant):

- atomic writes: an interrupted write leaves the old file or the new one, never a partial one, and
  a completed write is a rename (a new inode; a reader of the old file still sees its bytes);
- statistics: the interval reported as 95% covers a known mean about 95% of the time, with the
  width of a 95% interval; McNemar's p is the exact binomial test of the discordant pairs;
- report wording: the verdict sentence says what the verdict rule says, for every verdict;
- gates: each gate is judged at the worst batch size, whichever batch size is the bad one.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from distill_export import files, validate
from distill_export.errors import ConfigError
from distill_export.config import ValidateConfig
from distill_export.tasks import get_task
from distill_export.tasks.classification import report as cls_report
from distill_export.tasks.classification import significance as cls_sig
from distill_export.tasks.detection import report as det_report
from distill_export.tasks.detection import significance as det_sig

from _detection_cases import hand_case

# ----- atomic writes -------------------------------------------------------------------------


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_completed_write_is_a_rename_not_an_overwrite(tmp_path):
    """The new bytes arrive under a new inode: a reader that opened the old file keeps reading the
    old bytes (an in-place write would truncate what it reads), nothing else is left in the folder,
    and the file has the permissions a plain open() gives."""
    final = tmp_path / "report.json"
    final.write_bytes(b"old contents " * 100)
    old_inode = final.stat().st_ino
    with open(final, "rb") as reader:
        files.write_text(final, "new")
        assert reader.read() == b"old contents " * 100
    assert final.read_text() == "new"
    assert final.stat().st_ino != old_inode
    assert _names(tmp_path) == {"report.json"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask


def _crash_inside(tmp: Path, point: str) -> None:
    if point == "before_write":
        raise RuntimeError("crash")
    with open(tmp, "wb") as f:
        f.write(b"half a fi")
        if point == "mid_write":
            f.flush()
            raise RuntimeError("crash")
    if point == "after_write":
        raise RuntimeError("crash")


@pytest.mark.parametrize("existed", [True, False])
@pytest.mark.parametrize("point", ["before_write", "mid_write", "after_write", "at_rename"])
def test_interrupted_write_leaves_the_old_file_or_none(tmp_path, monkeypatch, point, existed):
    """A failure at any point of atomic_path (in the caller's block, or the rename itself failing,
    as a crash between write and rename would leave it) keeps the old file under the final name
    (or no file when there was none) and leaves no temporary file behind."""
    final = tmp_path / "sub" / "model.pt"
    final.parent.mkdir()
    if existed:
        final.write_bytes(b"the old model")
    if point == "at_rename":
        def refuse(src, dst):
            raise OSError("disk gone")
        monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises((RuntimeError, OSError, ConfigError)):  # a failed rename: "cannot write FINAL: ..."
        with files.atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp != final
            _crash_inside(tmp, point if point != "at_rename" else "none")
    assert _names(final.parent) == ({"model.pt"} if existed else set())
    if existed:
        assert final.read_bytes() == b"the old model"
    monkeypatch.undo()
    files.write_json(final, {"ok": 1})  # and the next write goes through
    assert final.read_text() == '{\n  "ok": 1\n}\n' and _names(final.parent) == {"model.pt"}


def test_torch_save_is_atomic_and_reproducible(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    final = tmp_path / "w.pt"
    files.torch_save({"w": torch.arange(4)}, final)
    first = final.read_bytes()
    files.torch_save({"w": torch.arange(4)}, tmp_path / "other.pt")
    assert (tmp_path / "other.pt").read_bytes() == first  # same object, same bytes
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(ConfigError, match=f"^cannot write {final}: no$"):  # the final file named, not the temporary
        files.torch_save({"w": torch.zeros(1000)}, final)
    assert final.read_bytes() == first and _names(tmp_path) == {"w.pt", "other.pt"}


def test_json_hashes_and_run_dirs(tmp_path):
    """write_json keeps the caller's key order and writes arrays and paths as JSON; the hashes
    are of the content (a torch archive's members, not its record folder's name)."""
    import hashlib

    torch = pytest.importorskip("torch")
    files.write_json(tmp_path / "r.json", {"z": np.arange(3), "a": Path("p/q"), "m": {"y": 1, "b": 2}})
    assert (tmp_path / "r.json").read_text() == (
        '{\n  "z": [\n    0,\n    1,\n    2\n  ],\n  "a": "p/q",\n  "m": {\n    "y": 1,\n    "b": 2\n  }\n}\n')
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        files.write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    big = np.random.default_rng(0).bytes(3 << 20)  # over one read chunk
    (tmp_path / "big.bin").write_bytes(big)
    assert files.sha256_file(tmp_path / "big.bin") == hashlib.sha256(big).hexdigest()
    assert files.torch_archive_hash(tmp_path / "big.bin") == hashlib.sha256(big).hexdigest()  # not a zip
    weights = {"w": torch.arange(6.0)}
    files.torch_save(weights, tmp_path / "a.pt")
    torch.save(weights, tmp_path / "b.pt")  # by path: the record folder is named "b"
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], weights["w"])
    assert files.torch_archive_hash(tmp_path / "a.pt") == files.torch_archive_hash(tmp_path / "b.pt")
    files.torch_save({"w": torch.arange(6.0) + 1}, tmp_path / "c.pt")
    files.torch_save({"v": torch.arange(6.0)}, tmp_path / "d.pt")
    hashes = {files.torch_archive_hash(tmp_path / f"{n}.pt") for n in "acd"}
    assert len(hashes) == 3 and all(len(h) == 64 for h in hashes)
    run = files.ensure_writable_dir(tmp_path / "x" / "y")
    assert run == tmp_path / "x" / "y" and run.is_dir() and not any(run.iterdir())
    (tmp_path / "file").write_text("")
    from distill_export.errors import ConfigError

    assert files.ensure_writable_dir(run) == run and not any(run.iterdir())  # an existing folder is fine
    with pytest.raises(ConfigError, match=r"--out .*file/run cannot be written: Not a directory$"):
        files.ensure_writable_dir(tmp_path / "file" / "run")


def _zip(path: Path, members: list[tuple[str, bytes]]) -> str:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return files.torch_archive_hash(path)


def test_archive_hash_is_of_the_members_below_the_record_folder(tmp_path):
    """Same members under another record folder, in another order, or with other volatile members
    (save id, sample inputs): the same hash. A member's path below the folder, or its bytes: another."""
    base = [("a/data/0", b"w0"), ("b/x/0", b"w1"), ("a/data.pkl", b"p")]
    h = _zip(tmp_path / "1.pt", [(n.replace("b/", "a/"), d) for n, d in base])
    assert _zip(tmp_path / "2.pt", [("r/data/0", b"w0"), ("r/x/0", b"w1"), ("r/data.pkl", b"p")]) == h
    assert _zip(tmp_path / "3.pt", [("a/data.pkl", b"p"), ("a/x/0", b"w1"), ("a/data/0", b"w0")]) == h  # order
    assert _zip(tmp_path / "4.pt", [("a/data/0", b"w0"), ("a/x/0", b"w1"), ("a/data.pkl", b"p"),
                                    ("a/.data/serialization_id", b"123"), ("a/data/sample_inputs/0", b"s")]) == h
    assert _zip(tmp_path / "5.pt", [("a/data/0", b"w0"), ("a/y/0", b"w1"), ("a/data.pkl", b"p")]) != h  # path
    assert _zip(tmp_path / "6.pt", [("a/data/0", b"w0"), ("a/x/0", b"w2"), ("a/data.pkl", b"p")]) != h  # bytes
    assert _zip(tmp_path / "7.pt", [("a/data/0", b"w1"), ("a/x/0", b"w0"), ("a/data.pkl", b"p")]) != h  # swapped


# ----- statistics ----------------------------------------------------------------------------


def test_bootstrap_interval_has_95_percent_coverage_and_width():
    """Paired 0/1 outcomes of known accuracies (0.80 vs 0.70, correlated): over 200 simulated test
    sets, the interval reported as 95% covers the true gain (0.10) in 90-99% of them, is centred on
    the observed gain (sign: a − b), and is as wide as a 95% normal interval (not a 90% or 99% one)."""
    n, reps = 200, 200
    covered, ratios = 0, []
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        u = rng.uniform(size=n)
        a = u < 0.80
        b = np.where(rng.uniform(size=n) < 0.5, u < 0.70, rng.uniform(size=n) < 0.70)
        true_gain = 0.80 - 0.70
        lo, hi = cls_sig.paired_bootstrap_ci(a, b, n_resamples=1000, seed=rep)
        diff = a.astype(float) - b.astype(float)
        assert lo <= diff.mean() <= hi
        covered += lo <= true_gain <= hi
        ratios.append((hi - lo) / (2 * 1.959964 * diff.std() / math.sqrt(n)))
    assert 0.90 <= covered / reps <= 0.99, covered / reps
    assert 0.93 <= float(np.mean(ratios)) <= 1.07, np.mean(ratios)


def _exact_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2 (symmetric: twice the smaller tail, capped at 1)."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(seed):
    from scipy.stats import binomtest

    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    a = rng.uniform(size=n) < rng.uniform(0.5, 0.9)
    b = np.where(rng.uniform(size=n) < 0.7, a, rng.uniform(size=n) < 0.6)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = cls_sig.mcnemar_exact(a, b)
    assert p == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)
    assert p == pytest.approx(_exact_two_sided(only_a, only_a + only_b), rel=1e-9)
    assert cls_sig.mcnemar_exact(b, a) == pytest.approx(p, rel=1e-12)  # symmetric
    both = np.ones(n, bool)  # concordant rows add nothing
    assert cls_sig.mcnemar_exact(np.r_[a, both], np.r_[b, both]) == pytest.approx(p, rel=1e-12)
    labels = rng.integers(0, 3, n)
    out = cls_sig.compare(np.where(a, labels, labels + 1), np.where(b, labels, labels + 1), labels)
    assert out["discordant"] == [only_a, only_b] and out["p_value"] == pytest.approx(p)
    assert out["gain"] == pytest.approx((only_a - only_b) / n, abs=1e-6)


def test_mcnemar_known_values():
    a = np.array([True] * 9 + [False] * 1)
    b = np.array([False] * 9 + [True] * 1)
    assert cls_sig.mcnemar_exact(a, b) == pytest.approx(22 / 1024)  # 2·(1 + 10)/2^10
    assert cls_sig.mcnemar_exact(a, a) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_detection_bootstrap_is_paired_symmetric_and_agrees_with_its_interval(seed):
    """A vs B and B vs A on the same draws: opposite gains, mirrored intervals, the same p; the
    interval holds the gain; p < 5% exactly when the interval leaves out 0 (both at 5%); a model
    against itself is a point at 0 with p = 1."""
    from _detection_cases import random_case

    good, targets = random_case(n=120, seed=seed)
    rng = np.random.default_rng(seed)
    noisy = {**good, "boxes": good["boxes"] + rng.normal(0, 4, good["boxes"].shape)}
    slight = {**good, "boxes": good["boxes"] + rng.normal(0, 0.3, good["boxes"].shape)}
    for other, significant in ((noisy, True), (slight, None)):  # None: either, but consistent
        ab = det_sig.compare(good, other, targets, 10, seed=3, n_boot=400)
        ba = det_sig.compare(other, good, targets, 10, seed=3, n_boot=400)
        assert ab["gain"] == pytest.approx(ab["map50_a"] - ab["map50_b"], abs=2e-6)
        assert ba["gain"] == pytest.approx(-ab["gain"]) and ba["p_value"] == ab["p_value"]
        assert ba["ci95"] == pytest.approx([-ab["ci95"][1], -ab["ci95"][0]], abs=1e-6)
        lo, hi = ab["ci95"]
        assert lo <= ab["gain"] <= hi
        sig = ab["p_value"] < 0.05
        assert sig == (lo > 0 or hi < 0), ab
        assert significant is None or sig == significant, ab
        if significant:
            assert ab["verdict"] == "paid" and ba["verdict"] == "hurt"
        assert {ab["verdict"], ba["verdict"]} in ({"paid", "hurt"}, {"no significant difference"})
    same = det_sig.compare(good, good, targets, 10, seed=3, n_boot=200)
    assert same["gain"] == 0 and same["ci95"] == [0, 0] and same["p_value"] == 1.0


def test_detection_p_value_and_95_interval_agree_near_the_border():
    """Over a sweep of degradations (some near significance): p < 5% exactly when the 95%
    interval leaves out 0. A 90% interval, or a one-sided p, breaks it somewhere in the sweep."""
    from _detection_cases import random_case

    seen = set()
    for seed in range(3):
        good, targets = random_case(n=100, seed=seed)
        rng = np.random.default_rng(seed)
        for sigma in (0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4):
            other = {**good, "boxes": good["boxes"] + rng.normal(0, sigma, good["boxes"].shape)}
            out = det_sig.compare(good, other, targets, 10, seed=seed, n_boot=500)
            lo, hi = out["ci95"]
            sig = out["p_value"] < 0.05
            seen.add(sig)
            assert sig == (lo > 0 or hi < 0), (seed, sigma, out)
    assert seen == {True, False}


# ----- report wording ------------------------------------------------------------------------

GAINS = [-0.08, -0.004, 0.0, 0.003, 0.07]
PS = [0.0001, 0.049, 0.05, 0.051, 0.6]


def _expected(gain: float, p: float) -> str:
    """The documented rule, written out independently: significant at 5%, then by the gain's sign."""
    if p < 0.05:
        return "paid" if gain > 0 else "hurt"
    return "no significant difference"


def _record(task: str, gain: float, p: float, verdict: str) -> dict:
    comparison = {"gain": gain, "ci95": [gain - 0.02, gain + 0.02], "p_value": p, "verdict": verdict}
    headline = "accuracy" if task == "classification" else "map50"
    return {"task": {"name": task, "headline": headline}, "kd_gain": gain, "kd_verdict": verdict,
            "kd_gain_p_value": p, "comparisons": {"student_vs_baseline": comparison},
            "distill": {"distilled": True, "student": "s", "method": "kd", "label_fraction": 1.0}}


OPENINGS = {"paid": "Distillation paid", "hurt": "Distillation hurt", "no significant difference": "No significant"}


@pytest.mark.parametrize("task, sig, view", [("classification", cls_sig, cls_report), ("detection", det_sig, det_report)])
def test_verdict_sentence_agrees_with_the_verdict_for_every_verdict(task, sig, view):
    seen = set()
    for gain in GAINS:
        for p in PS:
            if gain == 0.0 and p < 0.05:
                continue  # no paired test gives a significant zero gain
            verdict = sig.verdict(gain, p)
            assert verdict == _expected(gain, p), (gain, p)
            seen.add(verdict)
            sentence = view.kd_verdict(_record(task, gain, p, verdict))
            assert sentence.startswith(OPENINGS[verdict]), (gain, p, sentence)
            assert sum(sentence.count(o) for o in OPENINGS.values()) == 1, sentence
            points = float(re.search(r"([+-]?\d+\.\d) (?:mAP50 )?points", sentence).group(1))
            assert points == pytest.approx(abs(100 * gain) if verdict == "hurt" else 100 * gain, abs=0.051)
            assert f"{100 * (gain - 0.02):+.1f} to {100 * (gain + 0.02):+.1f}" in sentence
    assert seen == set(OPENINGS)


def test_classification_sentence_follows_compare_end_to_end():
    """Predictions built to give each verdict: compare's verdict, then the sentence, agree."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    base = np.where(rng.uniform(size=400) < 0.7, labels, (labels + 1) % 4)
    better = np.where(rng.uniform(size=400) < 0.6, labels, base)
    cases = {"paid": (better, base), "hurt": (base, better), "no significant difference": (base, base)}
    for want, (student, baseline) in cases.items():
        out = cls_sig.compare(student, baseline, labels)
        assert out["verdict"] == want
        assert (out["p_value"] < 0.05) == (want != "no significant difference")
        lo, hi = out["ci95"]
        assert (lo > 0) == (want == "paid") and (hi < 0) == (want == "hurt")
        record = _record("classification", out["gain"], out["p_value"], out["verdict"])
        record["comparisons"]["student_vs_baseline"]["ci95"] = out["ci95"]
        assert cls_report.kd_verdict(record).startswith(OPENINGS[want])


# ----- gates at the worst batch size ---------------------------------------------------------

BATCHES = [1, 7, 32]


def _validate(monkeypatch, task_name, precision, reference, bad_at, broken):
    def runner(x, bs):
        return broken(reference) if bs == bad_at else reference

    monkeypatch.setattr(validate, "make_runner", lambda *a, **k: runner)
    task = get_task(task_name)
    labels = reference.argmax(1) if task_name == "classification" else hand_case()[1]
    x = np.zeros((len(labels), 3), np.float32)
    art = {"path": "m.onnx", "runtime": "onnxruntime", "precision": precision, "format": "onnx"}
    return validate.validate_artifact(art, {"x": x, "labels": labels, "reference": reference},
                                      ValidateConfig(batch_sizes=BATCHES), task, None)


def _broken_logits(ref):
    out = ref.copy()
    out[::10] = np.roll(ref[::10], 1, axis=1)  # 10% of rows disagree
    return out


def _broken_detections(ref):
    out = {k: v.copy() for k, v in ref.items()}
    out["boxes"][:, 0] += 6.0  # each image's first detection moves 6 px (IoU < 0.9)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("task_name", ["classification", "detection"])
def test_each_gate_fails_when_only_one_batch_size_is_bad(monkeypatch, task_name, precision):
    if task_name == "classification":
        reference, broken = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32), _broken_logits
    else:
        reference, broken = hand_case()[0], _broken_detections
    clean = _validate(monkeypatch, task_name, precision, reference, None, broken)
    assert clean["passed"] and all(g["passed"] for g in clean["gates"].values())
    for bad_at in BATCHES:
        res = _validate(monkeypatch, task_name, precision, reference, bad_at, broken)
        assert not res["passed"], bad_at
        bad = res["per_batch"][str(bad_at)]
        for name, gate in res["gates"].items():
            assert not gate["passed"], (bad_at, name, gate)
            assert gate["value"] == bad[name]  # judged on the bad batch size's value
