"""The typed run record: report.json's sections (models.py), the task's payloads in it
(metrics.py), reading any older version (migrate.py), the file on disk (store.py) and its
published JSON Schema (schema.py, docs/report.schema.json)."""

from distill_export.record.metrics import ClassificationMetrics, PairedComparison, TaskComparison, TaskMetrics
from distill_export.record.migrate import RecordError, migrate, upgrade
from distill_export.record.models import SCHEMA_VERSION, SECTIONS, RunRecord


def as_record(report) -> RunRecord:
    """A RunRecord as it is; a report.json dict (any version) through migrate()."""
    return report if isinstance(report, RunRecord) else migrate(report)


__all__ = ["SCHEMA_VERSION", "SECTIONS", "ClassificationMetrics", "PairedComparison", "RecordError", "RunRecord",
           "TaskComparison", "TaskMetrics", "as_record", "migrate", "upgrade"]
