"""Datasets: the built-in AV-Digits demo and (later) user manifests."""

from __future__ import annotations

from distill_export.data.dataset import IGNORE_INDEX, Dataset, ModalitySpec, Split

__all__ = ["IGNORE_INDEX", "Dataset", "ModalitySpec", "Split", "load_dataset"]


def load_dataset(config, seed: int) -> Dataset:
    """Build the dataset a run's DataConfig names."""
    from distill_export.errors import ConfigError

    if config.source == "avdigits":
        from distill_export.data.avdigits import build_avdigits

        return build_avdigits(config, seed)
    raise ConfigError(f"unknown data source {config.source!r} (choices: avdigits)")
