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
    _note_label_fraction(config, data, targets)
    return data


def _note_label_fraction(config, data: Dataset, targets) -> None:
    """Record the fraction of labelled training rows that kept their label (report.json
    dataset.label_fraction_kept), and say so when it is not the one asked: whole rows are kept,
    at least one per class (or one image), so 0.005 of 1000 rows over 10 classes keeps 1%."""
    from distill_export.data.dataset import kept_differs, label_fraction_kept
    from distill_export.data.manifest_rows import console

    def pct(x: float) -> str:  # as the report writes it (record/format.py)
        return f"{100 * x:.1f}%"

    kept = label_fraction_kept(data.train)
    data.info["label_fraction_kept"] = kept
    if not kept_differs(config.label_fraction, kept):
        return
    rows = int(data.train.labeled.sum())
    total = round(rows / kept)  # the labelled training rows before any label was hidden
    floor = "one image" if getattr(targets, "keep_fraction", None) else "one per class"
    console.print(f"note: --label-fraction {config.label_fraction:g} (data.label_fraction) keeps {rows} of the {total} "
                  f"labelled training rows ({pct(kept)}): whole rows are kept, at least {floor}; report.json "
                  "records both (label_fraction, label_fraction_kept)")
