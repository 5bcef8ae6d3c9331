"""Thirty-first round (issue 24): what the thirtieth fresh audit found."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error
from distill_export.cli import app
from test_audit29 import _profile, _program

runner = CliRunner()


def test_b3_dims_derived_from_a_symbol_that_is_no_dim_are_held_to_it(tmp_path):
    """H = h+1 and W = 2*h, h itself no dim: --input-shape 1,9,18 was timed (torch's guard refuses it);
    h is now solved from H, so W must be 16."""
    h = torch.export.Dim("h", min=4, max=32)
    path = _program(tmp_path / "phantom.pt2", torch.randn(2, 1, 9, 16),
                    {0: torch.export.Dim("b", min=1, max=64), 2: h + 1, 3: 2 * h})
    line = one_line_error(_profile(path, "1,9,18", "1"), 2)
    assert line.startswith("error: --input-shape 1,9,18 at --batch 1 gives 'x' dim 3 the size 18, but ") and \
        line.endswith("= 16 (from the other dims)"), line
    assert _profile(path, "1,9,16", "1").exit_code == 0
    assert _profile(path, "1,11,20", "1").exit_code == 0  # h = 10 from H, W = 20


def test_b3_a_derived_dim_no_whole_number_gives_is_refused(tmp_path):
    """W = 2*h alone (h no dim): an odd W has no h."""
    h = torch.export.Dim("h", min=4, max=32)
    path = _program(tmp_path / "even.pt2", torch.randn(2, 1, 8, 16), {0: torch.export.Dim("b", min=1, max=64), 3: 2 * h})
    line = one_line_error(_profile(path, "1,8,17", "1"), 2)
    assert "gives 'x' dim 3 the size 17" in line and "which no whole number makes 17" in line, line
    assert _profile(path, "1,8,18", "1").exit_code == 0


# ----- B6: the self-training control of a teacher that reads the student's modality alone -----------


@pytest.fixture(scope="module")
def image_only(tmp_path_factory):
    from _byo_fixtures import make_manifest

    return make_manifest(tmp_path_factory.mktemp("audit30_image_only"), per_class=6, modalities=("image",))


def test_b6_a_control_the_user_asks_for_is_refused_when_the_teacher_reads_the_student_modality_alone(image_only, tmp_path):
    """The control would be the teacher again, and the report credited 'the teacher's other
    modalities' with +0.0 points: refused before any folder is made."""
    from _cli_checks import snapshot

    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", "--data", str(image_only), "--self-training-control", "--label-fraction", "1",
                                 "--out", str(tmp_path / "r"), "-q"])
    # refused once the data has loaded (the data's own line comes first): one error line, exit 2
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    line = errors[0]
    assert line == ("error: --self-training-control (distill.self_training_control) cannot apply: the only column "
                    "of the data is the student modality 'image', so the teacher reads it alone and the control would "
                    "be that teacher again; drop it, or give the data the other modalities of the teacher"), line
    assert snapshot(tmp_path) == before


def test_b6_a_recipe_control_is_turned_off_with_a_note_and_config_yaml_says_so(image_only, tmp_path):
    """The default recipe sets the control: with image-only data it is off, said in one note line,
    and config.yaml records false (what ran)."""
    out = tmp_path / "r"
    result = runner.invoke(app, ["train-teacher", "--data", str(image_only), "--teacher-epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    notes = [x for x in result.output.splitlines() if x.startswith("note: the self-training control is off")]
    assert len(notes) == 1, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["distill"]["self_training_control"] is False


# ----- B4: a COCO box with no area or outside its image, named in the COCO file's terms -------------


@pytest.mark.parametrize(("bbox", "why"), [
    ([0, 0, 0, 6], "has zero or negative width or height"),
    ([5, 5, -3, 4], "has zero or negative width or height"),
    ([12, 0, 10, 6], "lies outside its 16x16 image"),
])
def test_b4_a_coco_box_without_area_or_outside_its_image_names_the_annotation(tmp_path, bbox, why):
    """Named the manifest row (which holds no box) with an x1 y1 x2 y2 box that is in no file."""
    from distill_export.errors import DataError
    from test_audit26 import _coco_case
    from test_boxes import load

    manifest = _coco_case(tmp_path, lambda coco: coco["annotations"][0].update(bbox=bbox))
    with pytest.raises(DataError) as caught:
        load(manifest, annotations="instances.json")
    assert f"COCO annotation id 1 in instances.json: bbox {bbox} {why}" in str(caught.value), str(caught.value)


# ----- B1, B2: a tool's own refusals exit 2, as the CLI's do ------------------------------------------


@pytest.mark.parametrize("missing", ["--mnist", "--fsdd"])
def test_b1_b2_prepare_avmnist_with_a_missing_folder_exits_2(tmp_path, missing):
    """It exited 1 (sys.exit with a message); the empty --mnist folder is named before --fsdd."""
    import subprocess
    import sys
    from pathlib import Path

    argv = {"--mnist": str(tmp_path / "mnist"), "--fsdd": str(tmp_path / "fsdd")}
    (tmp_path / "mnist").mkdir()
    (tmp_path / "fsdd").mkdir()
    argv[missing] = str(tmp_path / "nonexistent")
    tool = Path(__file__).resolve().parents[1] / "tools" / "prepare_avmnist.py"
    done = subprocess.run([sys.executable, str(tool), *[x for kv in argv.items() for x in kv], "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith("error: ") and str(tmp_path) in done.stderr, done.stderr  # the folder it lacks
    assert not (tmp_path / "o").exists()


# ----- B5: a faithful export whose TopK cut swaps near-tied peaks -------------------------------------


def _full_topk(scores, seed=0):
    """One image, K = len(scores) detections (all slots peaks: the TopK cut left others out)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (len(scores), 2))
    boxes = np.concatenate([xy, xy + 8], axis=1)[None]
    return {"boxes": boxes, "scores": np.asarray(scores, float)[None], "classes": np.zeros((1, len(scores)), int)}


def test_b5_near_ties_at_the_topk_cut_are_not_judged_a_confident_loss_still_is():
    import numpy as np

    from distill_export.tasks.detection.parity import match_detections as match

    ref_scores = np.linspace(0.1258, 0.1016, 20)  # an untrained heatmap's peaks, all near the prior 0.1
    reference = _full_topk(ref_scores)
    candidate = _full_topk(ref_scores + 1e-4)
    candidate["boxes"][0, -5:] += 30  # the five lowest replaced by near-ties from below the cut (other places)
    m = match(candidate, reference)
    # the five moved ones sit within the 0.01 margin of the cut: not judged; the others all match
    assert m["matched"] == m["reference_count"] and 5 <= 20 - m["reference_count"] < 20, m
    confident = _full_topk([0.9, *ref_scores[1:]])
    lost = _full_topk([0.9, *ref_scores[1:]])
    lost["boxes"][0, 0] += 30  # the one confident detection moved away: still a failure
    m = match(lost, confident)
    assert m["matched"] < m["reference_count"], m


def test_a1_confident_detections_the_reference_does_not_have_fail_the_gate():
    """A file whose heatmap bias made every background peak confident passed at 0 of 0 judged."""
    import numpy as np

    from distill_export.tasks import get_task

    task = get_task("detection")
    quiet = _full_topk(np.linspace(0.05, 0.01, 20))  # the student: nothing above the 0.1 threshold
    loud = _full_topk(np.linspace(0.999, 0.99, 20))  # the edited export: 20 confident detections
    targets = np.full((1, 1, 5), -1.0)  # one labeled image without boxes
    m = task.parity_metrics(loud, quiet, targets)
    assert m["matched_detections"] == 0.0 and m["extra_count"] == 20 and m["reference_count"] == 0, m
    assert task.parity_metrics(quiet, quiet, targets)["matched_detections"] == 1.0  # 0 of 0 either way: equal


def test_a2_a_text_file_given_as_weights_is_said_to_be_no_tensor_file(tmp_path):
    """same_weights (and every weights load) said 'not a readable tensor file: 105' (pickle's KeyError)."""
    import subprocess
    import sys
    from pathlib import Path

    text = tmp_path / "notes.pt"
    text.write_text("hi\n")
    tool = Path(__file__).resolve().parents[1] / "tools" / "same_weights.py"
    done = subprocess.run([sys.executable, str(tool), str(text), str(text)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {text} is not a readable tensor file: its bytes are neither a PyTorch zip archive nor a pickle"), done.stderr


def test_a3_a_stage_run_again_withdraws_the_report_plots_and_keeps_the_distill_figures(tiny_run, tmp_path):
    """A re-export dropped report.md and latency.csv but left the latency plots of the old profile."""
    import shutil

    from distill_export.rundir import RunDir

    run = RunDir.existing(shutil.copytree(tiny_run, tmp_path / "run"))
    plots = run.file("plots")
    assert (plots / "latency_vs_batch.png").is_file() and (plots / "accuracy_vs_latency.png").is_file()
    figures = {p.name for p in plots.glob("*.png")} - {"latency_vs_batch.png", "accuracy_vs_latency.png",
                                                       "training_curves.png"}
    run.begin_stage("export")
    left = {p.name for p in plots.glob("*.png")}
    assert left == figures and not run.file("report.md").exists(), left
