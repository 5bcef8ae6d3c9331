"""Distillation methods: registered terms (one file each) and objectives built from them."""

from distill_export.methods.base import (
    SetupInfo, Term, TermInputs, check_terms_for_task, register_term, term_class, term_names, terms_for_task,
)
from distill_export.methods.objective import (
    PRESETS, DistillModule, Objective, TermSpec, check_objective_for_task, preset_names, preset_tasks,
    presets_for_task, settings_read, teacher_needs, term_specs,
)

__all__ = [
    "PRESETS", "DistillModule", "Objective", "SetupInfo", "Term", "TermInputs", "TermSpec",
    "check_objective_for_task", "check_terms_for_task", "preset_names", "preset_tasks", "presets_for_task",
    "register_term", "settings_read", "teacher_needs", "term_class", "term_names", "term_specs", "terms_for_task",
]
