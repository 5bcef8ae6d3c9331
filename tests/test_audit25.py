"""Twenty-sixth round (issue 24): what the twenty-fifth fresh audit found."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from test_pt2_safety import PROFILE_FAST, clean, rewrite  # noqa: F401  (clean: the fixture)

runner = CliRunner()


def _first_expression(text: str):
    def edit(rel, data):
        if not re.fullmatch(r"models/[^/]+\.json", rel):
            return data
        program = json.loads(data)
        done = []

        def walk(item):
            if isinstance(item, dict):
                for key in item:
                    if key == "expr_str" and not done:
                        item[key] = text
                        done.append(True)
                    else:
                        walk(item[key])
            elif isinstance(item, list):
                for child in item:
                    walk(child)
        walk(program)
        assert done, "the program has a shape expression"
        return json.dumps(program).encode()
    return edit


@pytest.mark.parametrize(("expr", "why"), [
    ("Integer(1e999999999)", "holds a number with a decimal exponent beyond 30"),  # B1: sympy built a 10**999999999
    ("floor(1e99999)", "holds a number with a decimal exponent beyond 30"),  # A1: refused, with advice to raise a Python limit
    ("Max(" + ",".join(f"s{i}" for i in range(1, 1800)) + ")", "holds a Max or Min of more than 8 terms"),  # B2
    ("+".join(f"s{i}" for i in range(200)), "holds more than 128 terms"),
    ("Max(*(" + ",".join(f"s{i}" for i in range(1, 1800)) + "))", "holds '(*'"),  # unpacked: no count sees them
    ("(Max)(" + ",".join(f"s{i}" for i in range(1, 1800)) + ")", "holds ')('"),
    ("(" * 40 + "s0" + ")" * 40, "holds parentheses nested deeper than 32"),
])
def test_b1_b2_a_shape_expression_sympy_would_take_forever_on_is_refused(clean, tmp_path, expr, why):
    """Integer(1e999999999) and a Max of 1,799 symbols passed the allow-list; torch's sympify then
    ran without end (SIGTERM ignored in the first, inside C). Now they are refused in one line."""
    hostile = rewrite(clean, tmp_path / "h.pt2", _first_expression(expr))
    line = one_line_error(runner.invoke(app, ["profile", str(hostile), *PROFILE_FAST]), 2)
    assert "a shape expression in " in line and why in line, line
    assert "set_int_max_str_digits" not in line, line


def test_what_torch_writes_still_passes_and_costs_little():
    from distill_export.nets.pt2_exprs import scan

    for ok in ("Symbol('s40', positive=True, integer=True)", "Max(1, s0)", "((s0 - 1)//2) + 1",
               "FloorDiv(FloorDiv(s1 + 1, 2) + 1, 2)", "Eq(Mod(s0, 4), 0)", "Max(2, Min(s0, s1))", "1.5e3*s0"):
        bad, cost = scan(ok)
        assert bad is None and 0 < cost < 40, (ok, bad, cost)
    assert scan("Max(s1, s2, s3, s4, s5, s6, s7, s8)")[0] is None  # eight terms: the most a Max may hold
    assert scan("Max(s1, Max(s2, s3, s4, s5, s6, s7, s8, s9))")[0] == "a Max or Min of more than 8 terms"  # nested ones count


def test_a_program_exported_with_dynamic_height_and_width_loads(tmp_path):
    """The limits are for hostile strings: what torch.export.save writes for a convolutional
    net with dynamic batch, height and width (FloorDiv chains) passes and loads."""
    import torch

    from distill_export.nets.external import load_export_program

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    dims = {0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", min=17, max=512),
            3: torch.export.Dim("w", min=17, max=512)}
    program = torch.export.export(net, (torch.randn(2, 1, 32, 32),), dynamic_shapes=({**dims},))
    torch.export.save(program, str(tmp_path / "dyn.pt2"))
    teacher = load_export_program(tmp_path / "dyn.pt2")
    assert teacher is not None


def test_b2_many_costly_expressions_are_refused_together(tmp_path):
    """Each expression under the limits, but thousands of them: the program's total is bounded."""
    from distill_export.errors import CheckpointError
    from distill_export.nets.pt2_safety import _check_expressions

    expr = "Max(" + ", ".join(f"s{i}" for i in range(8)) + ")"
    path = tmp_path / "p.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("p/models/model.json", json.dumps({"nodes": [{"expr_str": expr}] * 4000}))
        z.writestr("p/models/ok.json", json.dumps({"nodes": [{"expr_str": expr}] * 100}))
    with zipfile.ZipFile(path) as z:
        _check_expressions(z, z.getinfo("p/models/ok.json"), path)  # a hundred: fine
        with pytest.raises(CheckpointError, match="would take sympy too long to parse"):
            _check_expressions(z, z.getinfo("p/models/model.json"), path)


@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (3, 1, 40, 40)])
def test_b3_parity_inputs_of_another_shape_are_named_not_blamed_on_the_export(run_copy, shape):
    """x of another row shape in parity_data.npz was reported as student.onnx disagreeing with the
    run's data, which had not changed. Now the file is named (its sha256 is not the one export
    recorded), with the advice to re-export."""
    parity = run_copy / "parity_data.npz"
    with np.load(parity) as f:
        arrays = {k: f[k] for k in f.files}
    rows = arrays["x"].shape[0]
    arrays["x"] = np.zeros((rows, *shape[1:]), np.float32)
    np.savez(parity, **arrays)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    assert line.startswith(f"error: {parity} changed after export (") and line.endswith("re-run `distill-export export`"), line
    assert snapshot(run_copy) == before


SUMMARY = {"decision": {"distill": True, "method": "hinton", "line": "hinton chosen",
                        "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}],
                        "augment": {"mix": "mixup", "mix_alpha": 0.4}, "rounds": 1},
           "search": ["terms", "mix"], "trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0,
           "baseline_val_accuracy": 0.5, "best": None}


@pytest.mark.parametrize(("edit", "why"), [
    (lambda s: s["decision"].pop("line"), "its decision has no line"),
    (lambda s: s.pop("trials"), "it has no trials"),
    (lambda s: s["decision"]["augment"].pop("mix"), "'mix'"),
    (lambda s: s["decision"]["augment"].update(mix="blend"), "distill.mix"),
    (lambda s: s["decision"]["augment"].update(mix_alpha=-1), "mix_alpha"),
    (lambda s: s["decision"].update(augment="mixup"), "decision.augment: Input should be a valid dictionary"),
    (lambda s: s["decision"].update(rounds="two"), "rounds"),
    (lambda s: s["decision"].update(teacher_fusion="sideways"), "fusion"),
])
def test_everything_resume_reads_from_tune_json_is_checked(tmp_path, edit, why):
    """The twenty-fifth audit read tune_before_distill: the mixing, rounds, fusion, line and trial
    counts were used unchecked after resumed_summary. Each is now refused naming tune.json."""
    import copy

    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.tune_record import resumed_summary

    path = tmp_path / "tune.json"
    path.write_text(json.dumps(SUMMARY))
    assert resumed_summary(path, RunConfig())["decision"]["augment"]["mix"] == "mixup"
    summary = copy.deepcopy(SUMMARY)
    edit(summary)
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    message = str(caught.value)
    assert message.startswith(f"{path} is not the tune.json tune wrote (") and why in message, message


def test_a_coco_annotations_file_changed_after_the_teacher_stage_is_refused(tmp_path, monkeypatch):
    """data.annotations was not hashed: boxes edited in instances.json after train-teacher were
    read by distill and export as if they were the teacher's. Now it is checked like the manifest."""
    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text("image,split\na.png,train\n")
    coco = tmp_path / "m" / "instances.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    config = RunConfig()
    config.data.source, config.data.annotations = "m/manifest.csv", "instances.json"
    run = RunDir.create(tmp_path / "R", fresh=True, stages=("train_teacher", "distill"))
    run.begin_stage("train_teacher", config)
    run.check_same_data("m/manifest.csv", "instances.json")  # unchanged: nothing to refuse
    original = coco.read_bytes()
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(ConfigError, match=r"its annotations file m/instances.json changed after the teacher stage"):
        run.check_same_data("m/manifest.csv", "instances.json")
    coco.unlink()
    with pytest.raises(ConfigError, match=r"its annotations file m/instances.json \(data.annotations\) does not exist"):
        run.check_same_data("m/manifest.csv", "instances.json")
    coco.write_bytes(original)
    run.check_same_data("m/manifest.csv", "instances.json")


def test_a2_same_weights_names_a_pt2_for_what_it_is(clean, tmp_path):
    """tools/same_weights.py F.pt2 teacher.pt repeated torch's 'checkpoint file is corrupted'."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "same_weights.py"
    done = subprocess.run([sys.executable, str(tool), str(clean), str(clean)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {clean} is a torch.export program (.pt2), not a checkpoint: this tool compares .pt files "
        "(e.g. RUN/student.pt, RUN/teacher.pt)"), done.stderr
