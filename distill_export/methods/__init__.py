"""Distillation methods: registered terms (one file each) and objectives built from them."""

from distill_export.methods.base import SetupInfo, Term, TermInputs, register_term, term_class, term_names
from distill_export.methods.objective import (
    PRESETS, DistillModule, Objective, TermSpec, preset_names, teacher_needs, term_specs,
)

__all__ = [
    "PRESETS", "DistillModule", "Objective", "SetupInfo", "Term", "TermInputs", "TermSpec",
    "preset_names", "register_term", "teacher_needs", "term_class", "term_names", "term_specs",
]
