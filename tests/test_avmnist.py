"""AV-MNIST from the raw files in ../shared/data: tools/prepare_avmnist.py on a few hundred
images, then one end-to-end run (1 epoch). Skipped when the shared data is absent."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MNIST, FSDD = SHARED / "mnist", SHARED / "fsdd" / "recordings"

pytestmark = pytest.mark.skipif(not (MNIST.is_dir() and FSDD.is_dir()),
                                reason=f"AV-MNIST raw files not in {SHARED}")


@pytest.fixture(scope="module")
def small_avmnist(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from prepare_avmnist import main
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("avmnist")
    return main(["--mnist", str(MNIST), "--fsdd", str(FSDD), "--out", str(out), "--limit", "300"])


def test_prepare_writes_a_speaker_disjoint_manifest(small_avmnist):
    out = small_avmnist.parent
    rows = list(csv.DictReader(open(small_avmnist)))
    pairs = list(csv.DictReader(open(out / "pairs.csv")))
    assert len(rows) == 300 and {r["split"] for r in rows} == {"train", "val", "test"}
    speakers = {s: {p["speaker"] for p, r in zip(pairs, rows) if r["split"] == s} for s in ("train", "val", "test")}
    assert speakers["test"] == {"yweweler"} and "yweweler" not in speakers["train"] | speakers["val"]
    for p, r in zip(pairs, rows):  # each image paired with a clip of its own digit
        assert p["fsdd_clip"].split("_")[0] == r["label"]
        assert (out / r["image"]).is_file() and (out / r["audio"]).is_file()
    info = json.loads((out / "prepare.json").read_text())
    assert info["pca_variance"] == 0.25 and info["pca_components"] >= 1


@pytest.mark.slow
def test_end_to_end_run(small_avmnist, tiny_config_file, tmp_path):
    from typer.testing import CliRunner

    from distill_export.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", str(small_avmnist), "--config", str(tiny_config_file),
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == small_avmnist.parent.name
    assert report["dataset"]["kinds"] == {"image": "image", "audio": "audio"}
    assert report["distill"]["teacher_cache"]["status"] == "miss"
    assert (out / "teacher_outputs" / "index.json").is_file()
    for role in ("teacher", "student", "baseline"):
        assert 0.0 <= report["metrics"][role]["accuracy"] <= 1.0
    # Distilling again on the same run directory reuses the teacher's outputs.
    again = CliRunner().invoke(app, ["distill", str(out), "--quiet", "--method", "hinton", "-T", "2"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["distill"]["teacher_cache"]["status"] == "hit"
