"""YAML recipes (teacher/student/data/hyper-parameters), shipped as ``distill_export.models``."""
