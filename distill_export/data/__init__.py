"""Datasets: the built-in AV-Digits demo, the built-in moving-digits detection clips
(data/moving_digits.py, generated once and read as a manifest) and user manifests (data/manifest.py)."""

from __future__ import annotations

from distill_export.data.dataset import IGNORE_INDEX, Dataset, ModalitySpec, Split

__all__ = ["IGNORE_INDEX", "Dataset", "ModalitySpec", "Split", "load_dataset"]


def load_dataset(config, seed: int, targets=None) -> Dataset:
    """Build the dataset a run's DataConfig names; `targets` (data.targets.TargetCodec, the
    task's) reads a manifest's label cells (default: one category per row)."""
    from distill_export.errors import ConfigError, DataError

    if config.source == "avdigits":
        from distill_export.data.avdigits import build_avdigits

        data = build_avdigits(config, seed)
    elif config.source == "moving_digits":
        import copy

        from distill_export.data.manifest import build_manifest_dataset
        from distill_export.data.moving_digits import ensure_moving_digits
        from distill_export.data.targets import BoxTargets

        targets = BoxTargets() if targets is None else targets
        if not getattr(targets, "spatial", False):
            raise ConfigError("data.source=moving_digits holds boxes: it needs a task whose targets are boxes "
                              "(task: detection)")
        manifest = copy.copy(config)
        manifest.source = str(ensure_moving_digits())
        data = build_manifest_dataset(manifest, seed, targets)
        data.name = "moving_digits"
    elif config.source.lower().endswith((".csv", ".jsonl")) or "/" in config.source:
        from distill_export.data.manifest import build_manifest_dataset

        data = build_manifest_dataset(config, seed, targets)
    else:
        raise ConfigError(f"unknown data source {config.source!r} (avdigits, moving_digits, or a manifest .csv/.jsonl)")
    if config.student_modality not in data.modalities:
        raise DataError(f"student modality {config.student_modality!r} is not in the data "
                        f"(modalities: {', '.join(sorted(data.modalities))})")
    return data
