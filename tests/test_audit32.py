"""Thirty-third round (issue 24): what the thirty-second fresh audit found."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.tasks import get_task
from test_audit31 import _dets, _refused, image_only_run  # noqa: F401  (image_only_run: the fixture)

runner = CliRunner()
NO_LABELS = np.full((1, 1, 5), -1.0)


# ----- B1, B2: detection parity an export could pass while wrong ------------------------------------


def test_b1_an_export_cannot_widen_the_cut_margin_with_its_own_errors():
    """Student: 20 class-1 detections 0.50..0.69. Export: the top 10 each 0.05 lower, and 10 class-2
    detections where the student has none. A margin read from the export's noise (0.05 -> 0.1)
    excused everything at or below 0.60 on both sides: gate 1.0."""
    student = _dets([(1, 0.50 + 0.01 * k, 3 * k, 0, 3 * k + 2, 2) for k in range(20)])
    export = _dets([(1, 0.55 + 0.01 * k, 3 * k, 0, 3 * k + 2, 2) for k in range(10, 20)]
                   + [(2, 0.50 + 0.01 * k, 3 * k, 10, 3 * k + 2, 12) for k in range(10)])
    m = get_task("detection").parity_metrics(export, student, NO_LABELS)
    assert m["matched_detections"] < 0.6 and m["extra_count"] >= 8, m


def test_b2_non_finite_boxes_or_scores_in_an_export_count_against_it():
    """NaN boxes beside a faithful detection were 'not valid': neither matched nor extra."""
    one = (1, 0.9, 10, 10, 30, 30)
    export = _dets([one] + [(2, 0.95, np.nan, 0, np.nan, 5)] * 5)
    m = get_task("detection").parity_metrics(export, _dets([one]), NO_LABELS)
    assert m["extra_count"] == 5 and m["matched_detections"] == pytest.approx(1 / 6), m
    inf_score = _dets([one, (2, np.inf, 40, 40, 50, 50)])
    assert get_task("detection").parity_metrics(inf_score, _dets([one]), NO_LABELS)["extra_count"] == 1


# ----- B3, B5: COCO files ---------------------------------------------------------------------------


def _load_coco(tmp_path, edit):
    from test_audit26 import _coco_case
    from test_boxes import load

    return load(_coco_case(tmp_path, edit), annotations="instances.json")


def test_b3_a_whole_float_width_is_a_width(tmp_path):
    """width 32.0 was 'not a positive whole number of pixels'."""
    def floats(coco):
        for im in coco["images"]:
            im["width"], im["height"] = float(im["width"]), float(im["height"])
    assert _load_coco(tmp_path, floats) is not None


def test_b5_two_coco_images_naming_one_file_are_named(tmp_path):
    """Blamed as 'has both a label cell and COCO annotations' in a manifest without labels."""
    from distill_export.errors import DataError

    def duplicate(coco):
        coco["images"][0]["file_name"] = coco["images"][1]["file_name"]
    with pytest.raises(DataError, match=r"images id \S+ and id \S+ both describe the manifest's .* each image must "
                                        r"be listed once"):
        _load_coco(tmp_path, duplicate)


# ----- B4: --teacher-fusion with nothing to fuse ----------------------------------------------------


def test_b4_a_teacher_fusion_given_for_one_modality_is_refused(image_only_run, tmp_path):  # noqa: F811
    manifest, _ = image_only_run
    line = _refused(runner.invoke(app, ["run", "--data", str(manifest), "--teacher-fusion", "late",
                                        "--out", str(tmp_path / "r"), "-q"]))
    assert line == ("error: --teacher-fusion late (teacher.fusion) cannot apply: the only column of the data is the "
                    "student modality 'image', so there are no modalities to fuse; drop --teacher-fusion"), line
    assert not (tmp_path / "r").exists()


# ----- A5: the opset range names the installed onnx's newest -----------------------------------------


def test_a5_the_opset_range_is_the_one_accepted():
    onnx = pytest.importorskip("onnx")
    from distill_export.config import RunConfig, validate_config
    from distill_export.errors import ConfigError

    config = RunConfig()
    config.export.opset = 16
    with pytest.raises(ConfigError, match=rf"export.opset must be in \[17, {onnx.defs.onnx_opset_version()}\]"):
        validate_config(config)


# ----- the thirty-third audit: COCO values of the wrong type, and scores no decode makes ------------


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c["images"][0].update(id=[1]), r"images\[0\] has the id \[1\], not a whole number or a string"),
    (lambda c: c["annotations"][0].update(category_id=[7]), r"COCO annotation id 1: category_id \[7\] is not in"),
    (lambda c: c["annotations"][0].update(image_id=[100]), r"annotation id 1: image_id \[100\] is not among"),
    (lambda c: c["annotations"][0].update(iscrowd="0"), r"COCO annotation id 1: iscrowd '0' is not 0 or 1"),
])
def test_a33_b1_b4_coco_values_of_the_wrong_type_are_named(tmp_path, edit, match):
    """Lists as ids were TypeError tracebacks; iscrowd "0" (true in Python) dropped the box as a crowd."""
    from distill_export.errors import DataError

    with pytest.raises(DataError, match=match) as caught:
        _load_coco(tmp_path, edit)
    assert "\n" not in str(caught.value)


def test_a33_b5_scores_lowered_below_the_threshold_or_below_zero_fail():
    """Every score lowered by 0.099: the matched pairs stayed within the old 0.1 tolerance, the empty
    slots read -0.099, and the gate passed with no export detection above the 0.1 threshold."""
    student = _dets([(1, 0.14, 10, 10, 30, 30), (1, 0.15, 40, 40, 60, 60)])
    export = {**student, "scores": student["scores"] - 0.099}
    m = get_task("detection").parity_metrics(export, student, NO_LABELS)
    assert m["matched_detections"] < 0.2 and m["extra_count"] == 18, m  # the 18 empty slots at -0.099
    export = {**student, "scores": np.where(student["scores"] > 0, student["scores"] - 0.06, 0.0)}
    assert get_task("detection").parity_metrics(export, student, NO_LABELS)["matched_count"] == 0


# ----- the thirty-fourth audit ------------------------------------------------------------------------


def test_a34_b1_every_tune_string_in_report_md_is_escaped():
    """decision.method, teacher_fusion and the teachers' names reached report.md raw (only the line was escaped)."""
    from distill_export.record import migrate
    from distill_export.record.format import md_text
    from distill_export.tasks.report_view import tune_sentence

    record = migrate({"tune": {"trials": 2, "completed": 2, "decision": {
        "distill": True, "method": "<img src=x onerror=alert(1)>", "line": "ok", "teacher_fusion": "<i>late</i>",
        "terms": [{"name": "ce", "weight": 1.0}]},
        "teachers": {"<script>alert(1)</script>": {"val_score": 0.5, "own": True}, "late": {"val_score": 0.4}}}})
    text = tune_sentence(record, md_text)
    assert "<img" not in text and "<i>" not in text and "<script>" not in text, text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text or "&lt;img" in text, text


def test_a34_b2_a_coco_category_name_that_is_a_list_is_refused(tmp_path):
    from distill_export.errors import DataError

    with pytest.raises(DataError, match=r"category .* needs an integer 'id' and a 'name' \(a string\)"):
        _load_coco(tmp_path, lambda c: c["categories"][0].update(name=["x"]))


def test_a34_b3_coco_results_keep_a_string_image_id(tmp_path):
    import json

    from distill_export.data.coco import write_coco_results

    boxes, scores, classes = np.array([[[1.0, 2, 5, 6]]]), np.array([[0.9]]), np.array([[0]])
    path = write_coco_results(tmp_path / "res.json", boxes, scores, classes, ["img-eight"], [7])
    assert json.loads(path.read_text())[0]["image_id"] == "img-eight"
