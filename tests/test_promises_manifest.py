"""data/manifest.py's promises on tiny manifests (8x8 PNGs and a text column; issue 25):

- a manifest is found as a file (.csv or .jsonl, `~` and $VARS expanded) or as a folder holding
  manifest.csv (first) or manifest.jsonl; anything else is one sentence naming the path, with the
  command that builds a shipped recipe's manifest;
- the split column is followed (calibration rows go to the calibration split only), else the
  labeled rows are drawn per class with the seed; an empty split is refused by name;
- inputs are normalised with the TRAINING rows' statistics only (val/test never leak into them);
  token ids are not normalised;
- label_fraction keeps the hidden rows' true labels apart (`hidden`), never in `labels`;
- one bad row is the error line itself; several are counted, with the first line;
- what the dataset records about itself (info) says what happened.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _byo_fixtures import class_image, make_manifest, read_rows, write_png, write_rows
from distill_export.config import DataConfig
from distill_export.data import IGNORE_INDEX, load_dataset
from distill_export.data import manifest as mf
from distill_export.errors import DataError


def load(path, seed: int = 0, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=seed)


def images(tmp_path, **kw):
    return make_manifest(tmp_path, modalities=("image",), **kw)


def _values(column) -> torch.Tensor:
    return column.float() if hasattr(column, "float") else column


# ----- finding the manifest ------------------------------------------------------------------

def test_a_manifest_is_found_as_a_file_or_a_folder_else_one_sentence(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError) as err:
        mf.resolve_manifest(str(folder))
    assert str(err.value) == f"no manifest.csv or manifest.jsonl in {folder}"
    (folder / "manifest.jsonl").write_text("{}\n")
    assert mf.resolve_manifest(str(folder)) == folder / "manifest.jsonl"
    (folder / "manifest.csv").write_text("image,label\n")
    assert mf.resolve_manifest(str(folder)) == folder / "manifest.csv"  # the CSV first
    (folder / "rows.TXT").write_text("x")
    with pytest.raises(DataError) as err:
        mf.resolve_manifest(str(folder / "rows.TXT"))
    assert str(err.value) == f"manifest {folder / 'rows.TXT'} must be a .csv or .jsonl file"
    (folder / "Rows.JSONL").write_text("{}\n")
    assert mf.resolve_manifest(str(folder / "Rows.JSONL")) == folder / "Rows.JSONL"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATA_DIR", str(folder))
    assert mf.resolve_manifest("~/data/manifest.csv") == folder / "manifest.csv"
    assert mf.resolve_manifest("$DATA_DIR") == folder / "manifest.csv"
    with pytest.raises(DataError) as err:
        mf.resolve_manifest(str(tmp_path / "nope.csv"))
    assert str(err.value) == f"manifest {tmp_path / 'nope.csv'} does not exist"


def test_a_missing_recipe_manifest_says_how_to_build_it(tmp_path):
    for name, command in mf.BUILDERS.items():
        path = tmp_path / name / "manifest.csv"
        with pytest.raises(DataError) as err:
            mf.resolve_manifest(str(path))
        assert str(err.value) == (f"manifest {path} does not exist; build it in a checkout of distill-export with: "
                                  f"{command} --out {path.parent} (docs/byo-data.md)")
    assert mf.missing_manifest("elsewhere/m.csv") == "manifest elsewhere/m.csv does not exist"
    # a user's file whose path holds a recipe's name is no recipe's manifest (forty-fifth audit R2)
    assert mf.missing_manifest("nope/avmnist_mine/mydata.jsonl") == "manifest nope/avmnist_mine/mydata.jsonl does not exist"


def test_a_manifest_without_rows_or_without_any_label_is_refused(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("image,label,split\n")
    with pytest.raises(DataError) as err:
        load(empty)
    assert str(err.value) == f"{empty} has a header but no rows: add one row per sample under it"
    path = images(tmp_path / "d")
    write_rows(path, [{**r, "label": ""} for r in read_rows(path)])
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (f"{path}: no row has a label (an empty label marks an unlabeled row, which only "
                              "distillation uses); the teacher and the baseline need labeled rows")


# ----- splits and statistics -----------------------------------------------------------------

def test_the_split_column_is_followed_and_calibration_rows_stay_apart(tmp_path):
    path = images(tmp_path / "d")
    rows = read_rows(path)
    for k in range(2):  # two unlabeled rows only the INT8 export reads
        write_png(path.parent / f"img/cal_{k}.png", np.full((8, 8), 200 + k))
        rows.append({"image": f"img/cal_{k}.png", "label": "", "split": "calibration"})
    data = load(write_rows(path, rows))
    assert data.info["sizes"] == {"train": 12, "val": 3, "test": 3} and data.info["split"] == "column"
    assert len(data.calibration) == 2 and data.info["calibration_rows"] == 2
    cal = _values(data.calibration.inputs["image"])
    for split in (data.train, data.val, data.test):  # no calibration image anywhere else
        x = _values(split.inputs["image"])
        assert not any(torch.equal(x[i], cal[j]) for i in range(len(x)) for j in range(2))
    assert torch.equal(data.calibration_rows("image", 5), data.calibration.inputs["image"][:5])
    assert "calibration_rows" not in load(images(tmp_path / "plain")).info


def test_splits_are_drawn_per_class_with_the_seed_and_an_empty_one_is_named(tmp_path):
    path = images(tmp_path / "d", per_class=10, split_column=False)
    a, b, c = load(path, seed=5), load(path, seed=5), load(path, seed=6)
    assert a.info["split"] == "drawn per class with seed 5" and a.info["sizes"] == {"train": 24, "val": 3, "test": 3}
    assert torch.equal(_values(a.test.inputs["image"]), _values(b.test.inputs["image"]))
    assert not torch.equal(_values(a.test.inputs["image"]), _values(c.test.inputs["image"]))
    assert sorted(a.val.labels.tolist()) == [0, 1, 2] and sorted(a.test.labels.tolist()) == [0, 1, 2]
    few = images(tmp_path / "few", per_class=2, split_column=False)  # 10% of 2 rounds to none
    with pytest.raises(DataError) as err:
        load(few)
    assert str(err.value) == f"{few}: no rows in the val split"
    col = images(tmp_path / "col")
    write_rows(col, [{**r, "split": "test" if r["split"] == "val" else r["split"]} for r in read_rows(col)])
    with pytest.raises(DataError) as err:
        load(col)
    assert str(err.value) == f"{col}: no rows in the val split (see its 'split' column)"


def test_inputs_are_normalised_with_the_training_rows_only(tmp_path):
    path = make_manifest(tmp_path / "d", modalities=("image", "audio", "text"))
    data = load(path)
    for name in ("image", "audio"):
        x = _values(data.train.inputs[name]).double()
        assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-4), name
    assert (data.modalities["text"].mean, data.modalities["text"].std) == (0.0, 1.0)
    assert data.train.inputs["text"].dtype == torch.int64  # token ids, not normalised
    for row in read_rows(path):  # brighter val/test images: the training statistics stay
        if row["split"] != "train":
            write_png(path.parent / row["image"], class_image(0, seed=9) * 0 + 255)
    again = load(path)
    assert (again.modalities["image"].mean, again.modalities["image"].std) == (
        data.modalities["image"].mean, data.modalities["image"].std)
    assert torch.equal(_values(again.train.inputs["image"]), _values(data.train.inputs["image"]))
    assert float(_values(again.test.inputs["image"]).min()) > float(_values(data.train.inputs["image"]).max()) - 1e-4
    assert data.modalities["image"].kind == "image" and data.modalities["image"].layout == "NCHW"
    assert data.modalities["text"].layout == "NL" and data.modalities["audio"].layout == "NCHW"


def test_gray_images_become_rgb_when_any_image_is_in_colour(tmp_path):
    path = images(tmp_path / "d")
    write_png(path.parent / "img" / "dog_4.png", class_image(1, seed=4, rgb=True))  # one val image in colour
    data = load(path)
    assert data.modalities["image"].shape == (3, 8, 8)
    for split in (data.train, data.val, data.test):
        assert tuple(split.inputs["image"].shape[1:]) == (3, 8, 8)
    gray = _values(data.train.inputs["image"])
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])  # gray copied to R, G, B


def test_hidden_labels_keep_the_true_targets_of_the_hidden_rows_only(tmp_path):
    path = images(tmp_path / "d", per_class=10, split_column=False, unlabeled=2)
    full, some = load(path), load(path, label_fraction=0.25)
    assert full.train.hidden is None
    kept = some.train.labeled
    assert int(kept.sum()) == 6 and some.info["labeled_train_rows"] == 6 and some.info["label_fraction"] == 0.25
    assert some.info["unlabeled_train_rows"] == 2 == full.info["unlabeled_train_rows"]
    assert bool((some.train.hidden[kept] == IGNORE_INDEX).all())
    merged = torch.where(kept, some.train.labels, some.train.hidden)
    assert torch.equal(merged, full.train.labels)  # the kept and hidden labels are the true ones
    assert torch.equal(some.val.labels, full.val.labels) and some.val.hidden is None


# ----- bad rows and what is recorded --------------------------------------------------------

def test_bad_rows_are_one_line_for_one_and_counted_for_several(tmp_path, capsys):
    path = images(tmp_path / "d")
    (path.parent / "img" / "cat_2.png").unlink()
    with pytest.raises(mf.ManifestError) as err:
        load(path)
    missing = path.parent / "img" / "cat_2.png"
    assert str(err.value) == f"{path}:4: bad row: image file not found: {missing}; fix it or pass --skip-bad-rows"
    assert [(p.line, p.message) for p in err.value.problems] == [(4, f"image file not found: {missing}")]
    (path.parent / "img" / "owl_1.png").unlink()
    with pytest.raises(mf.ManifestError) as err:
        load(path)
    assert str(err.value) == f"2 bad rows in {path} (listed above; first: line 4); fix them or pass --skip-bad-rows"
    capsys.readouterr()
    data = load(path, skip_bad_rows=True)
    assert data.info["skipped_rows"] == 2 and data.info["sizes"]["train"] == 10
    assert f"{path}: skipped 2 bad rows" in capsys.readouterr().err
    write_rows(path, [r for r in read_rows(path) if r["label"] == "cat"])
    with pytest.raises(DataError) as err:
        load(path, skip_bad_rows=True)
    assert str(err.value) == f"{path}: the labeled training rows hold one class only (only 'cat'); a classifier needs two or more"


def test_what_a_manifest_dataset_records_about_itself(tmp_path):
    path = make_manifest(tmp_path / "pets", modalities=("image", "text"), unlabeled=1)
    data = load(path)
    info = data.info
    assert data.name == "pets" and info["manifest"] == str(path)
    assert info["kinds"] == {"image": "image", "text": "text"} and info["frame_of"] == {}
    assert info["sizes"] == {"train": 13, "val": 3, "test": 3}
    assert info["labeled_train_rows"] == 12 and info["unlabeled_train_rows"] == 1
    assert info["skipped_rows"] == 0 and info["streaming"] is False and info["train_rows_subsampled_from"] is None
    assert info["resampled_wavs"] == {} and info["label_fraction"] == 1.0
    pre = info["preprocessing"]
    assert pre["text"] == {"buckets": mf.loaders.TEXT_BUCKETS, "ngrams": list(mf.loaders.TEXT_NGRAMS),
                           "max_tokens": mf.loaders.TEXT_MAX_TOKENS}
    assert pre["audio"] == mf.DEMO_AUDIO_SPEC and pre["text_encoder"] == "hashed"
    assert "clip_frames" not in pre and "coco" not in info
    assert data.target_names == ["cat", "dog", "owl"] and data.num_outputs == 3
    other = load(write_rows(tmp_path / "pets" / "birds.csv", read_rows(path)))
    assert other.name == "birds"  # a manifest not called manifest.* is named by its file


def test_max_train_rows_subsamples_with_the_seed(tmp_path):
    path = images(tmp_path / "d")
    a, b, c = (load(path, seed=s, max_train_rows=4) for s in (1, 1, 2))
    assert len(a.train) == 4 and a.info["train_rows_subsampled_from"] == 12
    assert torch.equal(_values(a.train.inputs["image"]), _values(b.train.inputs["image"]))
    assert not torch.equal(_values(a.train.inputs["image"]), _values(c.train.inputs["image"]))
    assert load(path, max_train_rows=12).info["train_rows_subsampled_from"] is None  # not fewer: all kept
    for seed in range(4):  # exactly that many distinct rows, whatever the seed
        assert len(load(path, seed=seed, max_train_rows=11).train) == 11
    one = load(path, max_train_rows=1)
    assert len(one.train) == 1 and one.target_names == ["cat", "dog", "owl"]  # left-out rows' classes stay known
    mixed = images(tmp_path / "u", unlabeled=4)  # unlabeled rows sampled out add no class
    assert load(mixed, seed=2, max_train_rows=8).target_names == ["cat", "dog", "owl"]
    outcomes = set()  # one kept training row: a labeled one loads, an unlabeled one is refused by name
    for seed in range(16):
        try:
            outcomes.add(len(load(mixed, seed=seed, max_train_rows=1).train))
        except DataError as exc:
            assert str(exc) == f"{mixed}: no labeled training rows (see its 'split' column)"
            outcomes.add("refused")
    assert outcomes == {1, "refused"}


def test_a_column_kind_comes_from_its_name_else_its_files(tmp_path):
    path = make_manifest(tmp_path / "d", modalities=("image", "audio", "text"))
    rows = [{"photo": r["image"], "voice": r["audio"], "note": r["text"], "label": r["label"], "split": r["split"]}
            for r in read_rows(path)]
    data = load(write_rows(path, rows), image_size=4, image_mode="rgb", student_modality="photo")
    assert data.info["kinds"] == {"photo": "image", "voice": "audio", "note": "text"}
    assert data.modalities["photo"].shape == (3, 4, 4)  # the config's image size and mode
    assert data.info["preprocessing"]["image_size"] == 4 and data.info["preprocessing"]["image_mode"] == "rgb"


def test_an_automatic_image_size_refuses_a_huge_first_image_naming_its_row(tmp_path):
    path = images(tmp_path / "d")
    huge = write_png(path.parent / "img" / "cat_0.png", np.zeros((8, 1025)))
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:2: data.image_size=0 (auto) takes the first image's size, and {huge} "
                                     "is 1025x8, more than 1024 px a side")
    assert load(path, image_size=8).modalities["image"].shape == (1, 8, 8)  # a set size resizes it instead


def test_chunked_statistics_equal_the_float64_ones():
    rng = np.random.default_rng(0)
    for shape, rows, spread in (((10, 3, 2), 3, 3.0), ((7, 5), 256, 0.2), ((1, 4), 1, 3.0), ((2, 1), 1, 0.5)):
        x = torch.from_numpy(rng.normal(2.0, spread, size=shape).astype(np.float32))
        mean, std = mf._chunked_mean_std(x, rows=rows)
        a = x.numpy().astype(np.float64)
        assert mean == pytest.approx(a.mean(), rel=1e-12) and std == pytest.approx(a.std(ddof=1), rel=1e-12)
    assert mf._chunked_mean_std(torch.full((4, 3), 2.5)) == (2.5, 1.0)  # no spread: std 1, nothing divides by 0
    assert mf._chunked_mean_std(torch.full((1, 1), 4.0)) == (4.0, 1.0)


def test_a_text_column_with_wordllama_not_installed_is_one_sentence(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wordllama") is not None:
        pytest.skip("wordllama is installed here")
    path = make_manifest(tmp_path / "d", modalities=("image", "text"))
    with pytest.raises(DataError) as err:
        load(path, text_encoder="wordllama")
    assert str(err.value) == (f"{path}:2: text column 'text': data.text_encoder=wordllama is not installed "
                              "(pip install 'distill-export[wordllama]', or text_encoder: hashed)")
    assert len(load(images(tmp_path / "i"), text_encoder="wordllama").train) == 12  # no text column: not needed


def test_8bit_images_are_held_as_uint8_in_every_in_memory_split(tmp_path):
    from distill_export.data.compact import CompactColumn

    data = load(images(tmp_path / "d"))
    for split in (data.train, data.val, data.test):
        column = split.inputs["image"]
        assert isinstance(column, CompactColumn) and column.data.dtype == torch.uint8
        assert column.float().dtype == torch.float32


def test_a_streamed_training_split_holds_what_memory_would_and_lists_bad_rows(tmp_path, capsys):
    from distill_export.data.manifest import ManifestError

    path = make_manifest(tmp_path / "d", modalities=("image", "audio", "text"), unlabeled=2)
    memory, streamed = load(path, streaming="off"), load(path, streaming="on")
    assert (f"{path}: 14 training rows, ~0 MB held decoded (data.streaming=on): streamed from disk, decoded per "
            "batch in this process (data.num_workers 0)") in capsys.readouterr().err  # the choice, naming the manifest
    assert streamed.info["streaming"] is True and memory.info["streaming"] is False
    assert torch.equal(streamed.train.labels, memory.train.labels) and len(streamed.train) == len(memory.train)
    for m, spec in memory.modalities.items():
        assert streamed.modalities[m].shape == spec.shape and spec.name == m
        assert (streamed.modalities[m].name, streamed.modalities[m].layout, streamed.modalities[m].kind) == (
            m, spec.layout, spec.kind)
        assert streamed.modalities[m].mean == pytest.approx(spec.mean, rel=1e-9, abs=1e-9)
        assert streamed.modalities[m].std == pytest.approx(spec.std, rel=1e-9)
        torch.testing.assert_close(streamed.train.inputs[m][:], _values(memory.train.inputs[m]), atol=1e-6, rtol=0,
                                   check_dtype=False)  # (a streamed text column indexes as float32 ids)
        for split in ("val", "test"):  # in memory either way
            torch.testing.assert_close(_values(getattr(streamed, split).inputs[m]),
                                       _values(getattr(memory, split).inputs[m]), atol=1e-6, rtol=0)
    some = load(path, streaming="on", label_fraction=0.5)
    assert torch.equal(some.train.hidden, load(path, streaming="off", label_fraction=0.5).train.hidden)
    line = 2 + [r["image"] for r in read_rows(path)].index("img/dog_1.png")  # a training row
    (path.parent / "img" / "dog_1.png").unlink()
    with pytest.raises(ManifestError) as err:
        load(path, streaming="on")
    assert str(err.value).startswith(f"{path}:{line}: bad row: image file not found")
    assert len(load(path, streaming="on", skip_bad_rows=True).train) == len(memory.train) - 1


def test_a_16bit_image_column_is_normalised_with_float64_training_statistics(tmp_path):
    """16-bit images are held as float32 in [0, 1] (not uint8): their mean and std (ddof=1) come
    from the training rows in float64; a column without spread divides by 1, not 0."""
    from PIL import Image

    path = images(tmp_path / "d")
    rows = read_rows(path)
    rng = np.random.default_rng(0)
    raw = {}
    for r in rows:
        pixels = rng.integers(20000, 30000, (8, 8)).astype(np.uint16)
        Image.fromarray(pixels).save(path.parent / r["image"])
        raw[r["image"]] = pixels.astype(np.float64) / 65535
    data = load(path)
    spec = data.modalities["image"]
    train = np.stack([raw[r["image"]] for r in rows if r["split"] == "train"])
    assert spec.mean == pytest.approx(train.mean(), rel=1e-5) and spec.std == pytest.approx(train.std(ddof=1), rel=1e-3)
    assert 0 < spec.std < 1 and spec.name == "image"
    x = data.train.inputs["image"].double()
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    for r in rows:
        Image.fromarray(np.full((8, 8), 25000, np.uint16)).save(path.parent / r["image"])
    flat = load(path)
    assert flat.modalities["image"].std == 1.0 and bool(torch.isfinite(flat.test.inputs["image"]).all())
