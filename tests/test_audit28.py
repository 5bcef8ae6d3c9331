"""Twenty-ninth round (issue 24): what the twenty-eighth fresh audit found."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error
from distill_export.cli import app
from test_pt2_safety import PROFILE_FAST

runner = CliRunner()


@pytest.mark.parametrize("expr", ["sqrt(Float(2, (9999999)))", "Float(2, precision=(9999999))", "Float(2, 999*999)",
                                  "RoundDecimal(s0, (9999999))", "Float(2, Max(9999999, 1))"])
def test_b1_a_float_precision_is_a_plain_number(expr):
    """Float(2, (9999999)) passed the precision cap (only a bare number was read): 38 s of sympy."""
    from distill_export.nets.pt2_exprs import scan

    assert scan(expr)[0] in ("a Float precision that is not a plain number",
                             "a RoundDecimal precision that is not a plain number"), scan(expr)
    assert scan("Float('1.5', precision=53)*s0")[0] is None and scan("RoundDecimal(s0, 2)")[0] is None


@pytest.fixture(scope="module")
def square_unbounded(tmp_path_factory):
    """Exported with one Dim for H and W (H == W), min 16 and no max; batch 1..64."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    side = torch.export.Dim("h", min=16)
    dims = {0: torch.export.Dim("b", min=1, max=64), 2: side, 3: side}
    path = tmp_path_factory.mktemp("pt2") / "square.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 32, 32),), dynamic_shapes=(dims,)), str(path))
    return path


@pytest.mark.parametrize(("shape", "batch", "message"), [
    ("1,4,4", "1", "--input-shape 1,4,4 is outside what {p} was exported for: its input 'input' takes dim 2 from 16 "
                   "to any"),  # B2: an unbounded dim went unchecked (int_oo)
    ("1,16,20", "1", "--input-shape 1,16,20 at --batch 1 gives 'input' dim 2 and 'input' dim 3 different sizes (16, 20); {p} was "
                     "exported with them equal"),  # B6
    ("1,16", "1", "--input-shape 1,16 contradicts {p}"),  # B5: a TypeError traceback
    ("1,9999,9999", "64", "input 'input' of shape [64, 1, 9999, 9999] needs"),  # B4: the batch the sweep feeds
])
def test_b2_b4_b5_b6_a_shape_the_program_was_not_exported_for_is_one_line(square_unbounded, shape, batch, message):
    argv = ["profile", str(square_unbounded), *PROFILE_FAST, "--input-shape", shape]
    argv[argv.index("--batch") + 1] = batch
    line = one_line_error(runner.invoke(app, argv), 2)  # torch.export names a Sequential's input 'input'
    assert message.format(p=square_unbounded) in line, line


def test_b4_an_allocation_torch_refuses_is_one_line(capsys):
    import typer

    from distill_export.cli.guard import _fail_for

    with pytest.raises(typer.Exit) as exit_:
        _fail_for(RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 25594880256 bytes. Error code 12"))
    assert exit_.value.exit_code == 2
    assert "out of memory (an allocation of 23.8 GiB failed); try a smaller batch size" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "shown"), [
    ("__my_data__", r"\_\_my\_data\_\_"), ("a\\|b", "a\\\\\\|b"), ("[click](http://x)", r"\[click\](http://x)"),
    ("a &lt;b&gt;", "a &amp;lt;b&amp;gt;"), ("**dog**", r"\*\*dog\*\*"), ("p < 0.05", "p < 0.05"),
    ("~~old~~", r"\~\~old\~\~"),  # GFM strikethrough (twenty-ninth audit B2)
])
def test_b3_markdown_characters_in_user_strings_are_escaped(text, shown):
    """`__my_data__` rendered as bold 'my_data'; `a\\|b` left its pipe bare (the backslash doubled)."""
    from distill_export.record.format import md_text

    assert md_text(text) == shown
