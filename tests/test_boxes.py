"""Box targets (data/boxes.py, data/coco.py): label cells and COCO files become (N, M, 5) rows
[class, x1, y1, x2, y2] (padding class -1, an unlabeled image all IGNORE_INDEX), label_fraction
hides whole images, predictions are written as COCO results that faster-coco-eval reads, and
each bad box or COCO entry is one line naming its row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _byo_fixtures import read_rows, write_rows
from _video_fixtures import make_video_manifest, square_box
from distill_export.config import DataConfig
from distill_export.data import IGNORE_INDEX, load_dataset
from distill_export.data.boxes import BoxTargets, parse_boxes
from distill_export.data.coco import coco_ground_truth, write_coco_results
from distill_export.data.dataset import labeled_rows
from distill_export.data.manifest import ManifestError
from distill_export.errors import DataError

PAD = [-1.0, 0.0, 0.0, 0.0, 0.0]


def load(path: Path, codec=None, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=0, targets=codec or BoxTargets())


def test_label_cells_parse_in_either_form():
    assert parse_boxes("3 10 12 30 34; 7 40 5 60 27;") == [("3", 10, 12, 30, 34), ("7", 40, 5, 60, 27)]
    assert parse_boxes("cat,1,2,3,4") == [("cat", 1, 2, 3, 4)]
    assert parse_boxes('[["traffic light", 1, 2, 3.5, 4]]') == [("traffic light", 1, 2, 3.5, 4)]
    assert parse_boxes("none") == [] == parse_boxes("[]")
    for bad, why in [("3 10 12 30", "has 4 fields"), ("3 a 1 2 3", "is not a number"),
                     ("3 10 10 10 20", "zero or negative size"), ("3 10 10 20 5", "zero or negative size")]:
        with pytest.raises(DataError, match=why):
            parse_boxes(bad)


def test_box_targets_layout(tmp_path):
    data = load(make_video_manifest(tmp_path, boxes=True, unlabeled=2), label_fraction=1.0)
    assert data.target_names == ["a", "b"]
    y = data.train.labels
    assert y.dtype == torch.float32 and y.shape == (8, 2, 5)  # M: the most boxes of any image (rows 0, 3, ...)
    assert y[0].tolist() == [[0, *square_box(2)], [1, 0, 0, 3, 3]]  # the square on the centre frame
    assert y[1].tolist() == [[1, *square_box(2)], PAD]  # one box, then padding
    assert (y[6:] == IGNORE_INDEX).all() and labeled_rows(y).tolist() == [True] * 6 + [False] * 2
    assert data.val.labels.shape[1:] == data.test.labels.shape[1:] == (2, 5)  # one M for every split


def test_boxes_follow_the_resize(tmp_path):
    data = load(make_video_manifest(tmp_path, boxes=True), image_size=8)
    x1, y1, x2, y2 = square_box(2)
    assert data.train.labels[1, 0].tolist() == [1, x1 / 2, y1 / 2, x2 / 2, y2 / 2]


def test_a_labeled_image_with_no_box(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    rows = read_rows(manifest)
    rows[1]["label"] = "none"
    write_rows(manifest, rows)
    y = load(manifest).train.labels
    assert y[1].tolist() == [PAD, PAD] and labeled_rows(y)[1]


def test_label_fraction_hides_whole_images_seeded(tmp_path):
    manifest = make_video_manifest(tmp_path, per_split=(10, 2, 2), boxes=True, unlabeled=2)
    full = load(manifest).train.labels
    runs = [load_dataset(DataConfig(source=str(manifest), label_fraction=0.3), seed=s, targets=BoxTargets()).train.labels
            for s in (0, 0, 1)]
    kept = [labeled_rows(y) for y in runs]
    assert [int(k.sum()) for k in kept] == [3, 3, 3]  # round(0.3 * 10) of the labeled images
    assert torch.equal(runs[0], runs[1]) and not torch.equal(kept[0], kept[2])
    assert not kept[0][10:].any()  # unlabeled rows stay unlabeled
    assert torch.equal(runs[0][kept[0]], full[kept[0]])  # the kept images keep every box


def test_classification_label_sampling_is_unchanged():
    from distill_export.data.dataset import keep_label_fraction
    from distill_export.data.manifest_targets import hide_labels
    from distill_export.data.targets import CategoricalTargets

    labels = torch.arange(40) % 4
    labels[5] = IGNORE_INDEX
    expect = labels.clone()
    idx = labeled_rows(labels).nonzero().squeeze(1)
    expect[idx] = keep_label_fraction(labels[idx], 0.25, 7)
    assert torch.equal(hide_labels(CategoricalTargets(), labels, 0.25, 7), expect)


def _bad(tmp_path, label: str, line: int = 3, codec=None) -> str:
    manifest = make_video_manifest(tmp_path, boxes=True)
    rows = read_rows(manifest)
    rows[line - 2]["label"] = label
    write_rows(manifest, rows)
    with pytest.raises(ManifestError) as err:
        load(manifest, codec)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{manifest}:{line}: bad row: "), message
    return message


@pytest.mark.parametrize("label, why", [
    ("a 10 4 17 10", "lies outside the 16x16 image"),
    ("a -2 4 6 10", "lies outside"),
    ("a 4 4 4 10", "zero or negative size"),
    ("a 8 4 6 10", "zero or negative size"),
    ("a 4 4 8", "has 4 fields"),
])
def test_a_bad_box_names_its_row(tmp_path, label, why):
    assert why in _bad(tmp_path, label)


def test_an_unknown_class_outside_train_names_its_row(tmp_path):
    message = _bad(tmp_path, "zebra 2 4 8 10", line=8)  # a val row (rows 6-7)
    assert "unknown class 'zebra' in its boxes: no training row has a box of it" in message


def test_the_edge_tolerance_clips_a_rounding_overshoot(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    rows = read_rows(manifest)
    rows[1]["label"] = "a 2 4 16.4 10"
    write_rows(manifest, rows)
    assert load(manifest).train.labels[1, 0].tolist() == [0, 2, 4, 16, 10]


# ----- COCO ------------------------------------------------------------------------------
def _coco(manifest: Path, by_id: bool = False, with_labels: bool = False) -> dict:
    """instances.json for the manifest's box labels; the manifest loses its label column."""
    rows = read_rows(manifest)
    cats = {"a": 7, "b": 3}
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}]}
    out = []
    for n, r in enumerate(rows):
        image_id = 100 + n
        if r["label"]:
            coco["images"].append({"id": image_id, "file_name": "./" + r["video"], "width": 16, "height": 16})
            for c, x1, y1, x2, y2 in parse_boxes(r["label"]):
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": cats[c], "bbox": [x1, y1, x2 - x1, y2 - y1]})
        row = {"video": r["video"], "split": r["split"]}
        if by_id:
            row["id"] = str(image_id)
        if with_labels:
            row["label"] = r["label"]
        out.append(row)
    write_rows(manifest, out)
    (manifest.parent / "instances.json").write_text(json.dumps(coco))
    return coco


@pytest.mark.parametrize("by_id", [False, True])
def test_coco_annotations_give_the_same_targets_as_label_cells(tmp_path, by_id):
    manifest = make_video_manifest(tmp_path, boxes=True, unlabeled=2)
    cells = load(manifest)
    _coco(manifest, by_id=by_id)
    data = load(manifest, annotations="instances.json")
    assert data.target_names == ["b", "a"]  # category-id order: 3, 7
    remap = torch.tensor([1.0, 0.0])  # the cells' class order is a, b
    for split in ("train", "val", "test"):
        got, want = getattr(data, split).labels, getattr(cells, split).labels.clone()
        real = want[..., 0] >= 0
        want[..., 0][real] = remap[want[..., 0][real].long()]
        assert torch.equal(got, want), split
    assert data.info["coco"]["category_ids"] == [3, 7]
    assert data.info["coco"]["image_ids"]["test"] == [108, 109]


def test_coco_crowd_and_empty_images(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    coco = _coco(manifest)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 101]  # labeled, no box
    coco["annotations"].append({"id": 99, "image_id": 102, "category_id": 3, "bbox": [0, 0, 16, 16], "iscrowd": 1})
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    y = load(manifest, annotations="instances.json").train.labels
    assert y[1].tolist() == [PAD, PAD] and labeled_rows(y)[1]
    assert y[2, 1].tolist() == PAD  # the crowd box is not a target


def test_coco_problems_are_one_line(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    coco = _coco(manifest)
    coco["annotations"][2]["category_id"] = 99  # image 101: manifest line 3
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(ManifestError, match=r"manifest.csv:3: bad row: COCO annotation id 3: category_id 99 is not "
                                            r"in the file's categories \(3, 7\)"):
        load(manifest, annotations="instances.json")
    kept = load(manifest, annotations="instances.json", skip_bad_rows=True)  # skipped like any bad row
    assert kept.info["skipped_rows"] == 1 and sum(kept.info["sizes"].values()) == len(read_rows(manifest)) - 1
    coco["annotations"][2]["category_id"] = 3
    coco["images"][0]["file_name"] = "clips/other.mkv"
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"instances.json: image file_name 'clips/other.mkv' \(the manifest's "
                                        r"'video' cells\) matches no manifest row") as err:
        load(manifest, annotations="instances.json")
    assert "\n" not in str(err.value)
    manifest = make_video_manifest(tmp_path / "ids", boxes=True)
    _coco(manifest, by_id=True)
    rows = read_rows(manifest)
    rows[0]["id"] = "5"
    write_rows(manifest, rows)
    with pytest.raises(DataError, match="image id 100 .*matches no manifest row"):
        load(manifest, annotations="instances.json")


def test_coco_needs_box_targets(tmp_path):
    from distill_export.data.targets import CategoricalTargets

    manifest = make_video_manifest(tmp_path, boxes=True)
    _coco(manifest)
    with pytest.raises(DataError, match="data.annotations .* needs a task whose targets are boxes"):
        load(manifest, CategoricalTargets(), annotations="instances.json")


def test_coco_results_are_read_back_by_faster_coco_eval(tmp_path):
    from faster_coco_eval import COCO, COCOeval_faster

    targets = torch.tensor([[[0, 1, 2, 9, 12], [1, 4, 4, 14, 15]],
                            [[1, 0, 0, 5, 5], PAD],
                            [[IGNORE_INDEX] * 5] * 2])  # unlabeled: not an image of the ground truth
    gt = COCO(coco_ground_truth(targets, ["a", "b"], (16, 16), image_ids=[10, 11, 12], category_ids=[7, 3]))
    assert sorted(gt.getImgIds()) == [10, 11] and len(gt.getAnnIds()) == 3
    boxes = targets[:2, :, 1:].clone()
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.0]])
    classes = targets[:2, :, 0].clamp(min=0).long()
    path = write_coco_results(tmp_path / "res" / "results.json", boxes, scores, classes, [10, 11], [7, 3],
                              min_score=0.01)
    results = json.loads(path.read_text())
    assert results[0] == {"image_id": 10, "category_id": 7, "bbox": [1.0, 2.0, 8.0, 10.0], "score": 0.9}
    assert len(results) == 3 and not list(path.parent.glob(".*tmp"))  # atomic: no temporary file left
    dt = gt.loadRes(str(path))
    ev = COCOeval_faster(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)  # mAP@[.5:.95], mAP@.5
    np.testing.assert_array_equal(np.asarray(gt.loadAnns(gt.getAnnIds(imgIds=[10]))[0]["bbox"]), [1, 2, 8, 10])


def test_a_row_with_a_label_cell_and_coco_annotations_names_its_row(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    _coco(manifest)
    rows = read_rows(manifest)
    for r in rows:
        r["label"] = ""
    rows[2]["label"] = "a 2 4 8 10"  # line 4
    write_rows(manifest, rows)
    with pytest.raises(ManifestError, match=r"manifest.csv:4: bad row: has both a label cell and COCO annotations"):
        load(manifest, annotations="instances.json")


def test_coco_bare_file_names_match_and_sizes_are_checked(tmp_path):
    manifest = make_video_manifest(tmp_path, boxes=True)
    coco = _coco(manifest)
    for im in coco["images"]:
        im["file_name"] = Path(im["file_name"]).name  # 000.mkv: ends one row's cell
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    assert load(manifest, annotations="instances.json").train.labels.shape == (6, 2, 5)
    coco["images"][1]["width"] = 640  # image 101: manifest line 3
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(ManifestError, match=r"manifest.csv:3: bad row: the COCO image \(id 101\) is 640x16, its file "
                                            r".*001.mkv is 16x16"):
        load(manifest, annotations="instances.json")
