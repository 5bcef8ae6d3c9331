"""Choices in help texts come from the registries, read when help is shown.

A help text names its choices with a placeholder, `{students}`, `{formats}`, ... (`{choices}`:
what config validation accepts for the option's key); HelpCommand fills them in when `--help`
is printed. Reading a registry imports its members (students and
methods import torch), so no command pays for it unless it prints help, and a runtime-only
install (no torch) still runs `profile`, `validate` and `report`.
"""

from __future__ import annotations

import re
from typing import Callable

from typer.core import TyperCommand


def _students():
    from distill_export.nets.students import student_names

    return student_names()


def _methods():
    from distill_export.methods import preset_names

    return preset_names()


def _fusions():
    from distill_export.nets.teacher import TEACHER_FUSIONS
    from distill_export.nets.video_teacher import DETECTION_TEACHER_FUSIONS

    # classification's, then detection's (its "frame" teacher is the control's, not a choice)
    return list(dict.fromkeys([*TEACHER_FUSIONS, *(f for f in DETECTION_TEACHER_FUSIONS if f != "frame")]))


def _formats():
    from distill_export.export import format_names

    return format_names()


def _calibration_methods():
    from distill_export.export.base import CALIBRATION_METHODS

    return CALIBRATION_METHODS


def _min_opset():
    from distill_export.export.base import MIN_OPSET

    return [str(MIN_OPSET)]


def _devices():
    from distill_export.config_checks import DEVICES

    return DEVICES


def _recipes():
    from distill_export.config import recipe_names

    return recipe_names()


def _gates():
    from distill_export.tasks import get_task, task_names

    return list(dict.fromkeys(g.config_key for name in task_names() for g in get_task(name).gates))


def _tasks():
    from distill_export.tasks import task_names

    return task_names()


def _backends():
    from distill_export.runtimes.base import backend_names

    return list(backend_names())


def _targets():
    from distill_export.profiling.settings import PRESETS

    return list(PRESETS)


CHOICES: dict[str, Callable[[], list[str]]] = {
    "students": _students, "methods": _methods, "fusions": _fusions, "formats": _formats,
    "calibration_methods": _calibration_methods, "min_opset": _min_opset,
    "devices": _devices, "recipes": _recipes, "gates": _gates, "tasks": _tasks, "backends": _backends, "targets": _targets,
}
_PLACEHOLDER = re.compile(r"\{(%s)\}" % "|".join([*CHOICES, "choices"]))


def fill(text: str, key: str | None = None) -> str:
    """`text` with each {placeholder} replaced by its registry's names, comma-separated;
    {choices}: the values config validation accepts for `key` (config_checks.CHOICES)."""
    def names(match) -> str:
        if match.group(1) == "choices":
            from distill_export.config_checks import CHOICES as ACCEPTED

            return ", ".join(ACCEPTED[key])
        try:
            return ", ".join(CHOICES[match.group(1)]())
        except ImportError:  # e.g. students without torch installed
            return f"(the registered {match.group(1)})"

    return _PLACEHOLDER.sub(names, text)


class HelpCommand(TyperCommand):
    """A command whose option help texts are filled from the registries when help is printed."""

    def format_help(self, ctx, formatter) -> None:
        from distill_export.cli.options import flags_for

        keys = {f.param: f.key for f in flags_for(self.name)}
        for param in self.params:
            if getattr(param, "help", None):
                param.help = fill(param.help, keys.get(param.name))
        return super().format_help(ctx, formatter)
