"""Each CLI option names its config key once: cli/options.py FLAGS maps options to keys, every
other option is declared in NOT_CONFIG, and nothing else in the CLI package maps a key by hand."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.cli.options import FLAGS, NOT_CONFIG, flags_for
from distill_export.config import RunConfig

CLI = Path(__file__).resolve().parents[1] / "distill_export" / "cli"


def _config_keys() -> set[str]:
    keys = set()

    def walk(prefix, obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}{f.name}.", value)
            else:
                keys.add(prefix + f.name)

    walk("", RunConfig())
    return keys


def _commands():
    return typer.main.get_command(app).commands


def test_every_option_of_every_command_maps_to_one_config_key_or_is_declared_not_config():
    for name, command in _commands().items():
        params = {p.name for p in command.params}
        from_table = {f.param for f in flags_for(name)}
        assert from_table <= params, (name, sorted(from_table - params))
        undeclared = params - from_table - set(NOT_CONFIG)
        assert not undeclared, f"{name}: options {sorted(undeclared)} are neither in FLAGS nor in NOT_CONFIG"


def test_every_flag_names_one_existing_key_and_no_key_twice():
    keys = [f.key for f in FLAGS]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert set(keys) <= _config_keys(), sorted(set(keys) - _config_keys())
    params = [f.param for f in FLAGS]
    assert len(params) == len(set(params))
    names = [n.lstrip("-") for f in FLAGS for n in re.split(r"[ /]", f.names)]
    assert len(names) == len(set(names))
    commands = set(_commands())
    assert all(f.commands and set(f.commands) <= commands for f in FLAGS)


def test_no_config_key_is_mapped_by_hand_outside_the_table():
    """A string literal that is a dotted config key ("distill.rounds", "export.formats") appears
    in the CLI package only inside FLAGS (messages may name keys in prose)."""
    sections = {k.split(".")[0] for k in _config_keys() if "." in k}
    looks_like_key = re.compile(r"\b(%s)\.[a-z_]+\b" % "|".join(sorted(sections)))
    found = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text())
        table = set()
        if path.name == "options.py":
            table = {id(n) for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and getattr(node.func, "id", None) == "Flag" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in table:
                if looks_like_key.fullmatch(node.value.strip()):
                    found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_help_lists_choices_from_the_registries():
    from distill_export.export import format_names
    from distill_export.methods import preset_names
    from distill_export.nets.students import student_names
    from distill_export.nets.teacher import TEACHER_FUSIONS

    text = " ".join(CliRunner().invoke(app, ["run", "--help"], terminal_width=400).output.split())
    for name in [*student_names(), *preset_names(), *format_names(), *TEACHER_FUSIONS]:
        assert name in text, name
    assert "{" not in text  # every placeholder filled


def test_a_new_flag_is_one_line(monkeypatch):
    """A Flag row for an existing key gives the command its option, and the key its value."""
    from distill_export.cli import options

    row = options.Flag("--distill-lr", "distill.lr", float, "Student learning rate.", ("distill",))
    monkeypatch.setattr(options, "FLAGS", (*options.FLAGS, row))
    seen = {}

    @options.config_flags("distill")
    def command(run_dir: str, overrides: dict = None, quiet: bool = False):
        seen.update(overrides)

    command(run_dir="r", distill_lr=0.5, alpha=None)
    assert seen == {"distill.lr": 0.5}
