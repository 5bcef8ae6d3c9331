"""Shared fixtures. `tiny_run` is one reduced end-to-end run (seconds, not minutes) that
tests of later stages reuse instead of training again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_CONFIG = {
    "teacher": {"epochs": 1},
    "distill": {"epochs": 1},
    "profile": {"batches": [1], "threads": [1], "warmup_s": 0.01, "min_time_s": 0.05, "min_iters": 5},
}


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config_file) -> Path:
    """A complete run directory from `distill-export run` on a reduced demo config."""
    from typer.testing import CliRunner

    from distill_export.cli import app

    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(app, ["run", "--config", str(tiny_config_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out
