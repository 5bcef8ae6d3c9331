"""The student registry's base: name -> factory, and the task each student serves.

Members register themselves with ``@register_student`` (classification) or
``@register_student(task="detection")``; nets/students.py is the facade that imports them all
and builds a student by name (create_student), so this base never imports a member.
"""

from __future__ import annotations

from typing import Callable

CLASSIFICATION = "classification"
DETECTION = "detection"

_REGISTRY: dict[str, Callable] = {}
_TASKS: dict[str, str] = {}  # name -> the task its output serves


def register_student(fn: Callable | None = None, *, task: str = CLASSIFICATION):
    """``@register_student`` or ``@register_student(task="detection")``: the factory's own name
    is the student's name. Factories take (num_classes, in_channels, small_input)."""
    def add(f: Callable) -> Callable:
        _REGISTRY[f.__name__] = f
        _TASKS[f.__name__] = task
        return f

    return add(fn) if fn is not None else add
