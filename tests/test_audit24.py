"""Twenty-fifth round (issue 24): what the twenty-fourth fresh audit found."""

from __future__ import annotations

import io
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


def test_b1_a_power_tower_in_a_shape_expression_is_refused(clean, tmp_path):
    """`Symbol(...)+0*9**9**9**9` used only allowed names and ran sympy forever (no output, killed)."""
    from distill_export.nets.pt2_exprs import bad_part

    def edit(rel, data):
        if not re.fullmatch(r"models/[^/]+\.json", rel):
            return data
        return re.sub(rb'"expr_str": "(Symbol[^"]*)"', rb'"expr_str": "\1+0*9**9**9**9"', data)

    slow = rewrite(clean, tmp_path / "slow.pt2", edit)
    line = one_line_error(runner.invoke(app, ["profile", str(slow), *PROFILE_FAST]), 2)
    assert "a shape expression in " in line and "holds a power beyond what a shape needs" in line, line
    assert bad_part("s0**2") is None and bad_part("2*s0 + 1") is None
    assert bad_part("Pow(9, Pow(9, 9))") == bad_part("99**2") == "a power beyond what a shape needs"
    assert bad_part("1" * 16) == "a number of more than 15 digits"


def test_b2_a_pt2_declaring_a_huge_input_is_refused_before_allocating(clean, tmp_path):
    """A .pt2 whose input is declared 1x1x100000x100000: profile tried to allocate 40 GB."""
    def edit(rel, data):
        if not re.fullmatch(r"models/[^/]+\.json", rel):
            return data
        program = json.loads(data)
        sizes = program["graph_module"]["graph"]["tensor_values"]["image"]["sizes"]
        sizes[2], sizes[3] = {"as_int": 100000}, {"as_int": 100000}
        return json.dumps(program).encode()

    big = rewrite(clean, tmp_path / "big.pt2", edit)
    line = one_line_error(runner.invoke(app, ["profile", str(big), *PROFILE_FAST]), 2)
    assert "input 'image' of shape [1, 1, 100000, 100000] needs 37.3 GiB for one batch" in line, line


def test_b3_a_parity_array_declaring_a_huge_shape_is_named(run_copy):
    """validate said 'out of memory; try a smaller batch size' for a parity file whose x.npy header
    declared (10**6, 10**6): the file is the problem, and it is named."""
    parity = run_copy / "parity_data.npz"
    with zipfile.ZipFile(parity) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    members["x.npy"] = header.getvalue() + bytes(64)  # magic, version 1.0 and the header; 64 bytes of data
    with zipfile.ZipFile(parity, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    assert line.startswith(f"error: {parity} is not readable parity data (") and "out of memory" not in line, line
    assert "Unable to allocate 3.64 TiB" in line, line  # numpy's own words: what the header asked for
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(("edit", "why"), [
    (lambda s: s.pop("decision"), "it has no decision with terms and distill"),
    (lambda s: s["decision"]["terms"][0].update(weight=float("nan")), "decision.terms.0.weight is NaN"),
    (lambda s: s["decision"].update(terms=[{"name": "nonexistent_term", "weight": 1.0}]), "unknown distillation term"),
])
def test_b4_b6_a_tune_json_that_tune_did_not_write_is_named_on_resume(tmp_path, edit, why):
    """run --resume after the search reuses tune.json: a missing decision was a KeyError traceback,
    a NaN weight was blamed on report.json, an unknown term was written into config.yaml first."""
    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.tune_record import resumed_summary

    summary = {"decision": {"distill": True, "method": "hinton", "line": "hinton chosen", "terms": [
        {"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]},
        "trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0, "baseline_val_accuracy": 0.5, "best": None}
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(summary))
    assert resumed_summary(path, RunConfig())["decision"]["method"] == "hinton"  # what tune writes: reused
    edit(summary)
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    assert str(caught.value).startswith(f"{path} is not the tune.json tune wrote (") and why in str(caught.value)
    assert str(caught.value).endswith("restore it, or delete it and tuned.yaml so that `run --resume` searches again")


def test_a_swallowed_sigterm_stops_training_at_the_next_epoch():
    """CI once saw SIGTERM land early in `run` and the run finish every stage before exit 143:
    something swallowed the Terminated. The training loop raises it again at each epoch."""
    import torch
    from torch import nn

    from distill_export import interrupts
    from distill_export.train import TrainSpec, train_loop

    try:
        interrupts.raise_terminated(15, None)
    except interrupts.Terminated:
        pass  # swallowed, as a library's broad except would
    model = nn.Linear(2, 2)
    spec = TrainSpec(epochs=2, lr=0.1, batch_size=2)
    with pytest.raises(interrupts.Terminated):
        train_loop([model], lambda rows: model(torch.zeros(len(rows), 2)).sum(), 4, lambda: 0.5, spec, "m",
                   quiet=True)
    interrupts.reported_all()
