"""Twenty-third round (issue 24): what the twenty-third fresh audit found in `.pt2` programs."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error
from distill_export.cli import app
from test_pt2_safety import PROFILE_FAST, clean, rewrite  # noqa: F401  (clean: the fixture)

runner = CliRunner()


def _edit_model_json(edit):
    def apply(rel, data):
        return edit(data.decode()).encode() if re.fullmatch(r"models/[^/]+\.json", rel) else data
    return apply


@pytest.mark.parametrize("payload", [
    "(__import__('os').system('touch {marker}') and 0) or {expr}",
    "exec('open(\\\\'{marker}\\\\', \\\\'w\\\\')') or {expr}",
    "{expr}.subs({{}})",
])
def test_b1_a_shape_expression_torch_would_evaluate_is_refused(clean, tmp_path, payload):
    """torch.export.load sympifies (evals) each expr_str: a program whose shape expression called
    os.system created the marker from `profile` and `--teacher` (exit 0)."""
    from distill_export.nets.external import load_export_program

    marker = tmp_path / "PWNED"
    exprs = []

    def edit(data: str) -> str:
        found = re.findall(r'"expr_str": "((?:[^"\\]|\\.)*)"', data)
        exprs.extend(found)
        return re.sub(r'"expr_str": "((?:[^"\\]|\\.)*)"',
                      lambda m: json.dumps({"expr_str": payload.format(marker=marker, expr=json.loads(f'"{m.group(1)}"'))})[1:-1],
                      data)

    evil = rewrite(clean, tmp_path / "evil.pt2", _edit_model_json(edit))
    assert exprs and all(e.startswith("Symbol(") for e in exprs), exprs  # what torch.export.save writes
    line = one_line_error(runner.invoke(app, ["profile", str(evil), *PROFILE_FAST]), 2)
    assert line.startswith(f"error: {evil}: refused to load this .pt2: a shape expression in ") and \
        "which torch.export.save does not write (torch would evaluate it as Python)" in line, line
    with pytest.raises(Exception, match="a shape expression"):
        load_export_program(evil)
    assert not marker.exists()


def test_b1_the_expression_check_passes_what_torch_writes_and_nothing_else():
    from distill_export.nets.pt2_exprs import bad_part

    for ok in ("Symbol('s40', positive=True, integer=True)", "2*s0 + 1", "Max(1, s0)", "FloorDiv(s1, 2)",
               "Eq(Mod(s0, 4), 0)", "OpaqueUnaryFn_sqrt(s0)", "s0**2 - u3"):
        assert bad_part(ok) is None, ok
    for bad, why in (("__import__('os')", "'__'"), ("s0.subs(1)", "'.subs(1)'"), ("open('x')", "'open'"),
                     ("Symbol('a b')", "\"'a b')\""), ("[s0]", "'[s0]'"), (5, "a int, not a string")):
        assert bad_part(bad) == why, (bad, bad_part(bad))


def test_b3_a_weight_whose_stored_size_is_out_of_bounds_is_named(clean, tmp_path):
    """torch logs the cause, then raises 'Please check the warnings above' (suppressed): the line
    said nothing of what was wrong. Now torch's cause is the line."""
    def edit(rel, data):
        if not rel.endswith("_weights_config.json"):
            return data
        cfg = json.loads(data)
        first = next(iter(cfg["config"].values()))
        first["tensor_meta"]["sizes"][0] = {"as_int": 2 ** 40} if isinstance(first["tensor_meta"]["sizes"][0], dict) \
            else 2 ** 40
        return json.dumps(cfg).encode()

    bad = rewrite(clean, tmp_path / "big.pt2", edit)
    line = one_line_error(runner.invoke(app, ["profile", str(bad), *PROFILE_FAST]), 2)
    assert line.startswith(f"error: {bad} is not a torch.export program (.pt2): ") and "warnings above" not in line, line
    assert "1099511627776" in line, line
