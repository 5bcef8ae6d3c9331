"""Tasks: what the student predicts and how that is judged (classification, detection, ...).

A task is one folder here (or a class registered from anywhere with ``@register_task``). The
trainer, pipeline, tune, rounds, export, validate, recommend and report call the task's hooks
and never look at what the targets are: see ``base.Task`` for the hooks.
"""

from distill_export.tasks.base import Gate, Task, get_task, register_task, task_names

__all__ = ["Gate", "Task", "get_task", "register_task", "task_names"]
