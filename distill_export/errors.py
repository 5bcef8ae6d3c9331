"""Typed errors. The CLI turns each into a one-line message and a non-zero exit code."""


class DistillExportError(Exception):
    """Base class: anything the user can fix. Exit code 2 unless a subclass says otherwise."""

    exit_code = 2


class ConfigError(DistillExportError):
    """A bad option, config key or recipe."""


class DataError(DistillExportError):
    """Data that cannot be read or does not fit the run."""


class CheckpointError(DistillExportError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class TrainingDiverged(DistillExportError):
    """A training whose loss went NaN or infinite: stopped at the end of that epoch, nothing saved."""


class LossInputError(DistillExportError, ValueError):
    """Inputs to kd_loss that would give a silent wrong answer."""


class ExportError(DistillExportError):
    """An export that failed; the message names the model, the format and a fallback."""


class BackendUnavailable(DistillExportError):
    """A backend (TensorRT, CUDA, an execution provider) that is asked for and not installed."""


class ParityError(DistillExportError):
    """An exported model whose outputs break a parity gate."""

    exit_code = 1
