"""Thirtieth round (issue 24): what the short twenty-ninth fresh audit found."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error
from test_pt2_safety import PROFILE_FAST
from distill_export.cli import app

runner = CliRunner()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def _program(path, example, dims):
    torch.export.save(torch.export.export(_Net().eval(), (example,), dynamic_shapes=(dims,)), str(path))
    return path


def _profile(path, shape, batch):
    argv = ["profile", str(path), *PROFILE_FAST, "--input-shape", shape]
    argv[argv.index("--batch") + 1] = batch
    return runner.invoke(app, argv)


def test_b1_a_dim_derived_from_another_is_given_what_it_derives_to(tmp_path):
    """W exported as 2*H: --input-shape 1,8,20 was timed (torch's own guard refuses it)."""
    h = torch.export.Dim("h", min=4, max=64)
    path = _program(tmp_path / "derived.pt2", torch.randn(2, 1, 8, 16),
                    {0: torch.export.Dim("b", min=1, max=64), 2: h, 3: 2 * h})
    line = one_line_error(_profile(path, "1,8,20", "1"), 2)
    assert line.startswith("error: --input-shape 1,8,20 at --batch 1 gives 'x' dim 3 the size 20, but ") and \
        line.endswith("= 16 (from the other dims)"), line
    assert _profile(path, "1,8,16", "1").exit_code == 0


def test_b3_the_batch_is_held_to_a_dim_it_was_exported_equal_to(tmp_path):
    """Batch and H exported as one symbol: --batch 4 with H 8 was timed."""
    b = torch.export.Dim("b", min=4, max=64)
    path = _program(tmp_path / "beq.pt2", torch.randn(8, 1, 8, 8), {0: b, 2: b})
    line = one_line_error(_profile(path, "1,8,8", "4"), 2)
    assert line == (f"error: --input-shape 1,8,8 at --batch 4 gives the batch and 'x' dim 2 different sizes (4, 8); "
                    f"{path} was exported with them equal"), line
    assert _profile(path, "1,8,8", "8").exit_code == 0


def test_b2_gfm_strikethrough_in_a_user_string_is_text():
    from distill_export.record.format import md_text

    assert md_text("~~old~~ www.evil.example") == r"\~\~old\~\~ www.evil.example"
