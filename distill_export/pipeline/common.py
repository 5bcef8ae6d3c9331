"""What every stage module shares: the console the stages print on, and the record's task section."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, markup=False, emoji=False)  # paths as typed: "[/]" is not markup, ":fire:" no emoji


def task_info(task) -> dict:
    """The record's task section: renderers read the headline metric's name from it."""
    return {"name": task.name, "headline": task.headline, "score_name": task.score_name}
