"""Config: defaults < recipe < YAML file < flags; unknown keys and bad values are named."""

from __future__ import annotations

import pytest

from distill_export.config import load_config, recipe_names
from distill_export.errors import ConfigError


def test_layering(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("distill:\n  temperature: 2.0\n  alpha: 0.3\nseed: 7\n")
    cfg = load_config("avdigits", cfg_file, {"distill.alpha": 0.9})
    assert cfg.distill.temperature == 2.0  # from the file
    assert cfg.distill.alpha == 0.9  # the flag wins
    assert cfg.seed == 7
    assert cfg.student.name == "tiny_cnn"  # from the recipe


def test_recipes_ship_with_the_package():
    assert "avdigits" in recipe_names()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("distill:\n  temprature: 2\n", "temprature"),
        ("distil:\n  temperature: 2\n", "distil"),
        ("distill:\n  epochs: many\n", "epochs"),
        ("distill: 3\n", "mapping"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_bad_config_is_named(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config("avdigits", f)


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"distill.temperature": 0}, "temperature"),
        ({"distill.alpha": 1.5}, "alpha"),
        ({"data.label_fraction": 0}, "label_fraction"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_values(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("avdigits", None, override)


def test_unknown_recipe_lists_choices():
    with pytest.raises(ConfigError, match="avdigits"):
        load_config("nope")


def test_lists_from_flags():
    cfg = load_config("avdigits", None, {"export.formats": "onnx, onnx-fp16"})
    assert cfg.export.formats == ["onnx", "onnx-fp16"]
