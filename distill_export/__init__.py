"""distill-export: cross-modal knowledge distillation, export, parity, profiling and reports."""

__version__ = "0.1.0"
