"""The third audit's leftovers (issue 24: O3, F4, W3, N6). Each is refused in one line, exit 2,
before anything is written, and the user's files are unchanged:
- O3: an ONNX input that declares a negative dimension ([1, -3, 4]) is invalid, not "dynamic";
- F4: `run --tune N --tune-search rounds` with distill.rounds set by the user (flag or --config),
  which the search would replace in silence; a recipe's own rounds still applies;
- W3: a --student-init (or checkpoint) float64 tensor whose value overflows the model's float32;
- N6: a --label-fraction so small it keeps no row (the one-per-class floor would decide)."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import CheckpointError, ConfigError, DataError

runner = CliRunner()


def _negative_dim_model(path, shape=(1, -3, 4)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("extra", [[], ["--input-shape", "3,4"]])
def test_o3_an_onnx_input_with_a_negative_dimension_is_invalid_not_dynamic(tmp_path, extra):
    path = _negative_dim_model(tmp_path / "neg.onnx")
    before, out = snapshot(tmp_path), tmp_path / "prof"
    line = one_line_error(runner.invoke(app, ["profile", str(path), "--batch", "1", "--threads", "1",
                                              "--out", str(out), "--quiet", *extra]), 2)
    assert line == (f"error: {path}: input 'x' declares dimension 1 as -3 [1, -3, 4]: a dimension is a size "
                    "(0 or more) or dynamic, never negative, so the file is invalid"), line
    assert "dynamic dimensions" not in line and snapshot(tmp_path) == before and not out.exists()


def test_o3_every_session_checks_it_and_named_dynamic_dims_still_open(tmp_path):
    from distill_export.runtimes.onnx_runtime import onnx_session

    path = _negative_dim_model(tmp_path / "neg_batch.onnx", (-1, 3))
    with pytest.raises(DataError, match=r"declares dimension 0 as -1 \[-1, 3\]"):
        onnx_session(path)  # validate and the OpenVINO runner open ONNX files this way too
    ok = _negative_dim_model(tmp_path / "dyn.onnx", ("batch", None, 4))
    assert [i.shape for i in onnx_session(ok).get_inputs()][0][1:] == [None, 4]


def test_f4_searched_rounds_with_rounds_set_by_the_user_are_refused(tmp_path):
    out = tmp_path / "run"
    line = one_line_error(runner.invoke(app, ["run", "--out", str(out), "--tune", "2", "--tune-search", "rounds",
                                              "--rounds", "3", "--quiet"]), 2)
    assert line.startswith("error: --rounds 3 (distill.rounds) is set, but --tune-search includes rounds"), line
    assert "drop --rounds" in line and "drop rounds from --tune-search" in line and not out.exists()
    for text in ("distill:\n  rounds: 2\n", "distill.rounds: 2\n"):  # nested or dotted, in --config
        config = tmp_path / "c.yaml"
        config.write_text(text)
        before = snapshot(tmp_path)
        line = one_line_error(runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--tune", "2",
                                                  "--tune-search", "terms,rounds", "--quiet"]), 2)
        assert "--rounds 2 (distill.rounds) is set" in line and snapshot(tmp_path) == before


def test_f4_a_recipes_rounds_or_an_unsearched_rounds_is_not_refused():
    from distill_export.cli.options import load

    searched = {"distill.tune_trials": 2, "distill.tune_search": "rounds"}
    assert load("captioned_digits", None, searched).distill.rounds == 2  # the recipe's, not the user's
    assert load(None, None, {"distill.tune_trials": 2, "distill.rounds": 2}).distill.rounds == 2  # terms only


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from _byo_fixtures import make_manifest

    return make_manifest(tmp_path_factory.mktemp("leftover_data"), per_class=6, modalities=("image",))


def test_w3_a_student_init_value_that_overflows_float32_is_refused_at_load(tmp_path, manifest):
    from distill_export.nets.students import create_student

    state = {k: v.double() if v.is_floating_point() else v  # a float64 file that fits the student
             for k, v in create_student("tiny_cnn", 3, in_channels=1, input_size=8).state_dict().items()}
    state["head.weight"][0, 1] = 1e300  # finite in float64, inf in the model's float32
    path = tmp_path / "big.pt"
    torch.save(state, path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", "--data", str(manifest), "--student-init", str(path),
                                 "--out", str(tmp_path / "r"), "--quiet"])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"error: --student-init {path}: tensor 'head.weight' (float64) holds 1 value that "
                                "overflows float32, the model's dtype (largest magnitude 1e+300)"), errors[0]
    assert snapshot(tmp_path) == before  # no run directory, the file untouched


def test_w3_our_checkpoints_and_teacher_weights_check_the_cast_too():
    from torch import nn

    from distill_export.nets.checkpoint import load_state

    state = {"weight": torch.full((3, 2), -3e38, dtype=torch.float64) * 10, "bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"^teacher.pt: tensor 'weight' \(float64\) holds 6 values that overflow "
                                              r"float32"):
        load_state(nn.Linear(2, 3), state, "teacher.pt")  # teacher/student checkpoints, --teacher-weights
    fits = {"weight": torch.full((3, 2), 1e30, dtype=torch.float64), "bias": torch.zeros(3, dtype=torch.float64)}
    assert load_state(nn.Linear(2, 3), fits, "teacher.pt").weight.dtype == torch.float32  # large, finite: loads
    half = nn.Linear(2, 3).half()
    with pytest.raises(CheckpointError, match="overflow float16"):  # the model's dtype, whatever it is
        load_state(half, {"weight": torch.full((3, 2), 7e4), "bias": torch.zeros(3)}, "h.pt")


def test_n6_a_label_fraction_that_keeps_no_row_is_refused_before_the_run(tmp_path):
    out = tmp_path / "run"
    line = one_line_error(runner.invoke(app, ["run", "--out", str(out), "--label-fraction", "1e-300", "--quiet",
                                              "--config", str(_rows_config(tmp_path))]), 2)
    assert line == ("error: --label-fraction 1e-300 (data.label_fraction) keeps no row of the 200 labelled training "
                    "rows (1e-300 x 200 rounds to 0); the smallest fraction it takes is 0.00251, and any fraction "
                    "keeps at least 10 rows (one per class): pass at least that, or 1 for every label"), line
    assert not out.exists()


def _rows_config(tmp_path):
    path = tmp_path / "rows.yaml"
    path.write_text("data:\n  max_train_rows: 200\n")
    return path


@pytest.mark.parametrize("fraction", [0.05, 0.01, 0.1, 0.0167])
def test_n6_small_fractions_that_keep_rows_still_work(fraction):
    from distill_export.data.dataset import IGNORE_INDEX, keep_label_fraction

    labels = torch.arange(10).repeat(30)  # 300 rows, 10 classes
    kept = keep_label_fraction(labels, fraction, seed=0)
    assert int((kept != IGNORE_INDEX).sum()) == 10 * max(1, round(fraction * 30))  # the floor still applies per class


def test_n6_the_smallest_fraction_named_keeps_the_rows_it_promises():
    from distill_export.data.boxes import BoxTargets
    from distill_export.data.dataset import IGNORE_INDEX, check_fraction_keeps, keep_label_fraction

    labels = torch.arange(7).repeat(500)  # 3,500 rows, 7 classes: half a row is 0.000143 of them
    with pytest.raises(ConfigError, match=r"it takes is 0\.000143, and any fraction keeps at least 7 rows"):
        keep_label_fraction(labels, 1e-4, seed=0)
    assert int((keep_label_fraction(labels, 0.000143, seed=0) != IGNORE_INDEX).sum()) == 7  # the floor
    with pytest.raises(ConfigError, match=r"it takes is 0\.167, and any fraction keeps at least 1 row \(one image\)"):
        check_fraction_keeps(0.1, 3, 1, "one image")
    boxes = torch.zeros(4, 1, 5)
    with pytest.raises(ConfigError, match="keeps no row of the 4 labelled"):
        BoxTargets().keep_fraction(boxes, 0.1, 0)
    assert int((BoxTargets().keep_fraction(boxes, 0.2, 0)[:, 0, 0] != IGNORE_INDEX).sum()) == 1
