"""The report view of a record's task (tasks/: Task.report_view)."""

from __future__ import annotations


def task_view(record):
    """The view of record.task; a task that is not registered here (a user's task whose module
    is not imported) is rendered by the generic view from the record alone."""
    from distill_export.errors import ConfigError
    from distill_export.tasks import get_task
    from distill_export.tasks.report_view import GenericReportView

    try:
        return get_task(record.task.name).report_view()
    except ConfigError:
        return GenericReportView(record.task.headline, record.task.score_name)
