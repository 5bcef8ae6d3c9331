"""Typed run configuration: dataclasses, loaded from safe YAML, overridden by CLI flags.

Every stage receives the one ``RunConfig``; nothing forwards options one by one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distill_export.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "avdigits"  # the built-in demo, or a manifest path (.csv/.jsonl)
    student_modality: str = "image"
    label_fraction: float = 1.0  # fraction of training rows that keep their label
    pca_variance: float = 0.25  # demo: image variance kept by PCA (lower = harder)
    audio_snr_db: float = -10.0  # demo: noise mixed into the audio
    skip_bad_rows: bool = False
    # Manifests (data/manifest.py): image side in pixels (0 = the first image's size),
    # image_mode auto|grayscale|rgb, text_encoder hashed|wordllama (optional package),
    # max_train_rows > 0 subsamples the training rows (a recipe's time budget).
    image_size: int = 0
    image_mode: str = "auto"
    text_encoder: str = "hashed"
    max_train_rows: int = 0


@dataclass
class TeacherConfig:
    # Instead of training one: our checkpoint (.pt), a torch.export program (.pt2), or
    # "package.module:factory" (with `weights`, a state_dict .pt or .safetensors file).
    path: str | None = None
    weights: str | None = None
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    width: int = 16
    modality_dropout: float = 0.5  # zero one modality per sample while training


@dataclass
class StudentConfig:
    name: str = "tiny_cnn"
    init_weights: str | None = None


@dataclass
class DistillConfig:
    epochs: int = 12
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.5
    beta: float = 0.0  # feature distillation weight (0 = off)
    # What the teacher sees when it makes the soft targets: "full" (every modality) or
    # "student" (only the student's modality, other embeddings zeroed as in modality dropout).
    teacher_view: str = "full"
    kd_impl: str = "auto"
    # none | shift (random ±2 px translation of the student's input; the teacher then runs
    # on every augmented batch, so the teacher-output cache is not used).
    augment: str = "none"
    teacher_cache: bool = True  # teacher outputs on the train set, stored as safetensors
    teacher_cache_dir: str | None = None  # default: the run directory


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx"])
    opset: int = 18
    calibration_samples: int = 256
    calibration_method: str = "minmax"


@dataclass
class ValidateConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    fp32_max_abs: float = 1e-4
    fp32_agreement: float = 0.999
    fp16_agreement: float = 0.995
    int8_agreement: float = 0.98
    int8_max_accuracy_drop: float = 0.01


@dataclass
class ProfileConfig:
    batches: list[int] = field(default_factory=lambda: [1, 32])
    threads: list[int] = field(default_factory=lambda: [1, 0])  # 0 = all cores
    warmup_s: float = 0.2
    min_time_s: float = 0.5
    min_iters: int = 20


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (choices: {', '.join(choices)})"


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert a YAML/flag value to the type of the field's default."""
    if value is None or current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(current, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        kind = type(current[0]) if current else str
        return [_coerce(v.strip() if isinstance(v, str) else v, kind(), where) for v in items]
    try:
        if isinstance(current, float):
            return float(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a {type(current).__name__}, got {value!r}") from None
    return str(value) if isinstance(current, str) else value


def apply_overrides(config: RunConfig, values: dict[str, Any], origin: str = "config") -> RunConfig:
    """Apply nested ({section: {key: v}}) or dotted ({"section.key": v}) values; unknown keys fail."""
    for key, value in values.items():
        if "." in key:
            head, rest = key.split(".", 1)
            apply_overrides(config, {head: {rest: value}}, origin)
            continue
        names = [f.name for f in dataclasses.fields(config)]
        if key not in names:
            raise ConfigError(f"unknown key {key!r} in {origin}{_suggest(key, names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key!r} must be a mapping, got {value!r}")
            apply_overrides(current, value, f"{origin}: {key}")
        else:
            setattr(config, key, _coerce(value, current, f"{origin}: {key}"))
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)  # data only: never a loader that builds objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def recipe_names() -> list[str]:
    folder = resources.files("distill_export.models")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    names = recipe_names()
    if name not in names:
        raise ConfigError(f"unknown recipe {name!r}{_suggest(name, names)}")
    return Path(str(resources.files("distill_export.models") / f"{name}.yaml"))


def load_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults, then the recipe, then the user's YAML, then CLI flags (later wins)."""
    config = RunConfig()
    if recipe:
        data = read_yaml(recipe_path(recipe))
        data.pop("description", None)
        apply_overrides(config, data, f"recipe {recipe}")
    if config_file:
        apply_overrides(config, read_yaml(config_file), str(config_file))
    if overrides:
        apply_overrides(config, {k: v for k, v in overrides.items() if v is not None}, "flags")
    validate_config(config)
    return config


def validate_config(config: RunConfig) -> None:
    if not 0.0 < config.data.label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {config.data.label_fraction}")
    if config.distill.temperature <= 0:
        raise ConfigError(f"distill.temperature must be > 0, got {config.distill.temperature}")
    if not 0.0 <= config.distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], got {config.distill.alpha}")
    if config.distill.beta < 0:
        raise ConfigError(f"distill.beta must be >= 0, got {config.distill.beta}")
    if config.distill.teacher_view not in ("full", "student"):
        raise ConfigError(f"distill.teacher_view must be full or student, got {config.distill.teacher_view!r}")
    choices = {"data.image_mode": ("auto", "grayscale", "rgb"), "data.text_encoder": ("hashed", "wordllama"),
               "distill.augment": ("none", "shift")}
    for key, allowed in choices.items():
        value = getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if config.data.image_size < 0 or config.data.max_train_rows < 0:
        raise ConfigError("data.image_size and data.max_train_rows must be >= 0")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {config.device!r}")
    from distill_export.export.base import ExportOptions, parse_formats

    parse_formats(config.export.formats)  # an unknown format fails now, not after training
    ExportOptions.from_config(config.export)  # calibration method and sample count
    for name in ("epochs",):
        for section in (config.teacher, config.distill):
            if getattr(section, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig saved in a run directory."""
    return apply_overrides(RunConfig(), data, "run config")
