"""Object detection as a Task: CenterNet-style heads, mAP, matched-detection parity gates."""

from distill_export.tasks.detection.task import DetectionTask

__all__ = ["DetectionTask"]
