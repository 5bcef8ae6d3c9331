"""Shared by the weight-file audit tests (test_audit6_weights.py, test_audit7_weights_records.py):
a small image+audio manifest with a teacher trained on it, the CLI run against it, and the
one-line-error check that lets a manifest's note line come first."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from distill_export.cli import app

runner = CliRunner()
KEY = "backbone.0.0.weight"  # the student weight the forged files change
SMALL = {"data": {"label_fraction": 1.0}, "distill": {"epochs": 1}}  # a --teacher run: no teacher settings


def make_world(root: Path) -> dict:
    """A small image+audio manifest, a config for it and a teacher trained on it (seconds)."""
    from _byo_fixtures import make_manifest

    manifest = make_manifest(root / "data", per_class=6, modalities=("image", "audio"))
    config, teach = root / "small.yaml", root / "teach.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    teach.write_text(yaml.safe_dump({**SMALL, "teacher": {"epochs": 1, "width": 8}}))
    result = runner.invoke(app, ["train-teacher", "--config", str(teach), "--data", str(manifest),
                                 "--out", str(root / "T"), "-q"])
    assert result.exit_code == 0, result.output
    return {"manifest": manifest, "config": config, "teacher": root / "T" / "teacher.pt"}


def one_line_error(result) -> str:
    """Exit 2, no traceback, exactly one `error:` line and it is the last (a manifest's note
    line, "12 training rows ... decoded into memory", may come before it)."""
    text = (result.output or "").strip()
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and isinstance(result.exception, SystemExit), (text, result.exception)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], lines
    return lines[-1]


def cli(world, *args):
    return runner.invoke(app, [*args, "--config", str(world["config"]), "--data", str(world["manifest"]), "-q"])
