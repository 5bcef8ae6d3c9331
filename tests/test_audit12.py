"""Twelfth hostile audit (issue 24; docs/reliability.md, "Fourteenth round"): 2 bad findings,
each now refused in one line with exit 2 and no run folder:
- a temperature or alpha in --config that no term of the method reads was recorded as if it had
  run, where the same value as a flag (-T, --alpha) was refused;
- a YAML 1.1 binary number (`seed: 0b11`, read as 3)."""

from __future__ import annotations

import pytest

from _cli_checks import refused_config
from distill_export.cli.options import load


@pytest.mark.parametrize("text, line", [
    ("distill: {method: pseudo_label, temperature: 9}\n",
     "error: distill.temperature 9 (in --config) is set, but distill.method pseudo_label (ce, pseudo_label) does not "
     "read it: no term of it takes a temperature; drop distill.temperature from --config or choose another method"),
    ("distill: {method: labels_only, alpha: 0.3}\n",
     "error: distill.alpha 0.3 (in --config) is set, but distill.method labels_only (ce) does not read it: it has no "
     "distillation term for ce to share the weight with; drop distill.alpha from --config or choose another method"),
])
def test_an_objective_setting_in_config_that_no_term_reads_is_refused(tmp_path, text, line):
    assert refused_config(tmp_path, text)[0] == line


def test_an_objective_setting_in_config_that_a_term_reads_passes(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("distill: {method: hinton, temperature: 2, alpha: 0.7}\n")
    loaded = load(None, config, {})
    assert (loaded.distill.temperature, loaded.distill.alpha) == (2.0, 0.7)


def test_a_yaml_1_1_binary_number_is_refused(tmp_path):
    line, config = refused_config(tmp_path, "seed: 0b11\n")
    assert line.startswith(f"error: config {config} is refused: line 1: '0b11' is a YAML 1.1 number (3: "), line


def test_a_runs_own_config_yaml_reused_as_config_is_not_refused(tiny_run, tmp_path):
    """config.yaml records every key, the recipe's values included (temperature 4 beside
    pseudo_label, mix_alpha beside mix none, int8_recipe without INT8): what only repeats the
    recipe sets nothing, so the "cannot apply" checks read what differs from the recipe."""
    import yaml

    from distill_export.config import load_config

    loaded = load(None, tiny_run / "config.yaml", {})
    assert loaded.to_dict() == load_config("avdigits", tiny_run / "config.yaml", {}).to_dict()
    demo = tmp_path / "demo.yaml"
    demo.write_text(yaml.safe_dump(load_config("avdigits").to_dict()))
    assert load(None, demo, {}).distill.temperature == load_config("avdigits").distill.temperature
    assert refused_config(tmp_path, "distill: {method: pseudo_label, temperature: 9}\n")[0].startswith(
        "error: distill.temperature 9 (in --config) is set")  # a value the recipe does not have still counts
