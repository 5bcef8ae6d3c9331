"""The stages in order. Each reads and writes the run directory, so each also runs alone.

    data -> train_teacher -> distill -> export -> validate -> profile -> report

train_stages.py: train_teacher, distill; export_stage.py: export; check_stages.py: validate,
profile, report; all_stages.py: run_all, every stage in order with resume.
"""

from distill_export.pipeline.all_stages import run_all
from distill_export.pipeline.check_stages import stage_profile, stage_report, stage_validate
from distill_export.pipeline.common import console, task_info
from distill_export.pipeline.export_stage import stage_export
from distill_export.pipeline.train_stages import record_teacher, stage_distill, stage_train_teacher

__all__ = [
    "console", "record_teacher", "run_all", "stage_distill", "stage_export", "stage_profile",
    "stage_report", "stage_train_teacher", "stage_validate", "task_info",
]
