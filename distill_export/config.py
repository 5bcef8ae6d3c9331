"""Typed run configuration: dataclasses, loaded from safe YAML, overridden by CLI flags.

Every stage receives the one ``RunConfig``; nothing forwards options one by one. The checks
(ranges, registry names, choices) live in config_checks.py; load_config runs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distill_export.config_checks import (
    _show, _suggest, sets_key, settle_default_fusion, validate_config,
)
from distill_export.flag_checks import check_gates_of_task
from distill_export.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "avdigits"  # a built-in source (avdigits, moving_digits), or a manifest path (.csv/.jsonl)
    student_modality: str = "image"
    label_fraction: float = 1.0  # fraction of training rows that keep their label
    pca_variance: float = 0.25  # demo: image variance kept by PCA (lower = harder)
    audio_snr_db: float = -10.0  # demo: noise mixed into the audio
    skip_bad_rows: bool = False
    # Manifests (data/manifest.py): image side in pixels (0 = the first image's size),
    # image_mode auto|grayscale|rgb, text_encoder hashed|wordllama (optional package),
    # max_train_rows > 0 subsamples the training rows (a recipe's time budget): manifests and
    # moving_digits at random (the run's seed), avdigits the same share of each digit (fixed seed).
    image_size: int = 0
    image_mode: str = "auto"
    text_encoder: str = "hashed"
    max_train_rows: int = 0
    max_audio_seconds: float = 60.0  # manifests: a longer clip is refused, naming its row
    # Manifests: decode the training split per sample in DataLoader workers (data/streaming.py)
    # instead of into RAM. auto: stream when it would take more than stream_above_mb decoded.
    streaming: str = "auto"
    stream_above_mb: int = 2048
    num_workers: int = 0  # DataLoader workers (streaming: the up-front scan and each batch)
    pin_memory: str = "auto"  # auto (on with CUDA) | true | false
    persistent_workers: bool = True
    # Video columns (data/video.py): the odd number of frames of the clip around each target frame.
    clip_frames: int = 5
    # Detection labels as a COCO annotation file (relative to the manifest; data/coco.py), "" = none.
    annotations: str = ""


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
    modality_dropout: float = 0.5  # zero one modality per sample while training (concat fusion)
    # How the teacher combines modalities (nets/teacher.py TEACHER_FUSIONS): "concat" (embeddings
    # concatenated, one MLP) or "late" (a product of per-modality experts, log-softmaxes summed).
    fusion: str = "concat"


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
    # The objective (methods/): a preset by name, α·ce + (1−α)·<its terms> + β·feature
    # (choices: distill_export.methods.preset_names()), or explicit weighted terms, e.g.
    # [{name: kd, weight: 0.5, temperature: 4}, {name: ce, weight: 0.5}], which win over `method`.
    method: str = "hinton"
    terms: list = field(default_factory=list)
    temperature: float = 4.0  # for every term that takes one and does not set its own
    alpha: float = 0.5  # a preset's CE weight
    beta: float = 0.0  # a preset's feature-distillation weight (0 = off)
    # Also distill from an image-only teacher of the same size trained on the same labeled rows
    # (self-training without the other modality): separates what the extra modality gave from
    # what the unlabeled rows alone give.
    self_training_control: bool = False
    # Distillation rounds (rounds.py). From round 2 the teacher is the previous round's student
    # times an expert of each other modality re-fitted on the rows that student labeled
    # (co-training); the self-training control gets as many rounds, from its own student.
    rounds: int = 1
    # What the teacher sees when it makes the soft targets: "full" (every modality) or
    # "student" (only the student's modality, other embeddings zeroed as in modality dropout).
    teacher_view: str = "full"
    kd_impl: str = "auto"
    # none | shift (random ±2 px translation of the student's input) | crop (a random resized
    # crop); the teacher then runs on every augmented batch, so the teacher-output cache is not used.
    augment: str = "none"
    # Batch mixing, for the student and the baseline alike (data/augment.py): none | mixup | cutmix |
    # mixup_cutmix (one of the two per batch), lam ~ Beta(mix_alpha, mix_alpha). The teacher sees
    # the same mixed batch (consistent teaching), so it runs online, like with augment.
    mix: str = "none"
    mix_alpha: float = 1.0
    # `run --tune N` / `--tune-minutes M`: search the objective on validation (tune.py, with its
    # confirmation) after the teacher and before distilling; 0 = off (the config's objective).
    tune_trials: int = 0
    tune_minutes: float = 0.0
    # What the search varies: "terms" (the objective) or "terms,mix" (also distill.mix and its
    # strength, each mixing trial scored against a baseline trained with the same mixing).
    tune_search: str = "terms"
    teacher_cache: bool = True  # teacher outputs on the train set, stored as safetensors
    teacher_cache_dir: str | None = None  # default: the run directory
    # CUDA speed (ignored on CPU, where training stays fp32, NCHW and eager): bf16 autocast
    # (bf16 | off), channels_last for conv students, torch.compile of the student's module.
    amp: str = "bf16"
    channels_last: bool = True
    compile: bool = False


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx"])
    opset: int = 18
    calibration_samples: int = 256
    calibration_method: str = "minmax"
    # INT8 recipe (export/int8_recipes.py INT8_RECIPES): "auto" is the student architecture's
    # measured best (docs/export.md), else "qdq".
    int8_recipe: str = "auto"
    # Which torch exporter writes the FP32 ONNX: "dynamo" (torch.export; the default, with
    # TorchScript as its fallback) or "torchscript" (the older tracer, ~20x faster to run on a
    # small CNN but deprecated upstream). Recorded as the ONNX file's `exporter` metadata.
    exporter: str = "dynamo"


@dataclass
class ValidateConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    fp32_max_abs: float = 1e-4
    fp32_agreement: float = 0.999
    fp16_agreement: float = 0.995
    int8_agreement: float = 0.98
    int8_max_accuracy_drop: float = 0.01
    # Detection (tasks/detection): |ΔmAP50| vs the PyTorch student, and the share of its
    # detections (score >= 0.1) the export also finds (same class, IoU >= 0.9).
    fp32_map50_delta: float = 0.001
    fp32_matched: float = 0.99
    fp16_map50_delta: float = 0.005
    fp16_matched: float = 0.99
    int8_map50_delta: float = 0.02
    int8_matched: float = 0.95
    # Seconds one ONNX Runtime call may take before it is stopped and the model refused (a
    # runaway Loop in a hostile file; runtimes/onnx_bounds.py); also one call of a .pt2 teacher
    # (`--teacher`, teacher.path) in every stage (nets/pt2_bounds.py).
    max_call_s: float = 60.0


@dataclass
class ProfileConfig:
    batches: list[int] = field(default_factory=lambda: [1, 32])
    threads: list[int] = field(default_factory=lambda: [1, 0])  # 0 = all cores
    warmup_s: float = 0.2
    min_time_s: float = 0.5
    min_iters: int = 20
    max_call_s: float = 60.0  # as validate.max_call_s, for the first call of each model and cell


@dataclass
class RunConfig:
    # What the student predicts (tasks/: classification, or a task registered with @register_task).
    task: str = "classification"
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
    # Not a setting (no annotation: not a field, never written to config.yaml): the dotted keys
    # that a check after the data loads must know the user set (a flag or --config), not the
    # recipe; cli/options.load fills it. Empty for a config read back from a run.
    given_keys = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert a YAML/flag value to the type of the field's default."""
    if value is None and current is not None:  # `key: null` (or ~) where the field has a value
        raise ConfigError(f"{where}: expected a value like {_show(current, 40)}, got null; leave the key out "
                          "for its default")
    if value is None or current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {_show(value)}")
    if isinstance(current, list):
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list) and items and all(isinstance(v, dict) for v in items):
            return items  # a list of mappings (distill.terms): checked by the code that reads it
        if not isinstance(items, list):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        kind = type(current[0]) if current else str
        return [_coerce(v.strip() if isinstance(v, str) else v, kind(), where) for v in items]
    try:
        if isinstance(value, (bool, dict, list)) and isinstance(current, (int, float)):
            raise TypeError  # yes/no is not a number; int(True) would quietly give 1
        if isinstance(current, float):
            return float(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(current, int) else "a number"
        raise ConfigError(f"{where}: expected {kind}, got {_show(value)}") from None
    if isinstance(current, str) and isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    if isinstance(current, str) and isinstance(value, bool):
        if where.endswith(_ON_OFF_FIELDS):  # `streaming: on`, as docs/scale.md writes it (twenty-sixth audit B6)
            return "on" if value else "off"
        raise ConfigError(f"{where}: expected a string, got {str(value).lower()} (YAML reads a bare yes, no, on or "
                          "off as true or false; quote it)")
    return str(value) if isinstance(current, str) else value


# Fields whose values are on/off: YAML 1.1 reads a bare `on` or `off` as a boolean.
_ON_OFF_FIELDS = ("streaming",)


def _optional_str(config, key: str) -> bool:
    """A field declared `str | None` (annotations are strings here)."""
    kind = str(next(f.type for f in dataclasses.fields(config) if f.name == key)).replace(" ", "")
    return kind in ("str|None", "None|str", "Optional[str]")


def apply_overrides(config: RunConfig, values: dict[str, Any], origin: str = "config") -> RunConfig:
    """Apply nested ({section: {key: v}}) or dotted ({"section.key": v}) values; unknown keys fail."""
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: keys must be strings, got {_show(key)}")
        if "." in key:
            head, rest = key.split(".", 1)
            apply_overrides(config, {head: {rest: value}}, origin)
            continue
        names = [f.name for f in dataclasses.fields(config)]
        if key not in names:
            raise ConfigError(f"unknown key {_show(key)} in {origin}{_suggest(str(key)[:80], names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key!r} must be a mapping, got {_show(value)}")
            apply_overrides(current, value, f"{origin}: {key}")
        elif current is None and value is not None and not isinstance(value, str) and _optional_str(config, key):
            # an optional path/name (teacher.path, student.init_weights, ...): a string or nothing
            if isinstance(value, (dict, list, bool)):
                raise ConfigError(f"{origin}: {key} expected a string, got {_show(value)}")
            setattr(config, key, str(value))
        else:
            setattr(config, key, _coerce(value, current, f"{origin}: {key}"))
    return config


def apply_flags(config: RunConfig, flags: dict[str, Any]) -> RunConfig:
    """The command line's {dotted key: value} over a config (None: not given). --method names a
    preset, which replaces distill.terms from --config or a run's config.yaml: flags override
    the config, so the objective that runs (and config.yaml and the report) is the flag's."""
    given = {k: v for k, v in flags.items() if v is not None}
    apply_overrides(config, given, "flags")
    if given.get("distill.method") is not None:
        config.distill.terms = []  # explicit terms would win over any method (methods/objective.py)
    return config


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from a user file: data only (no tags that build objects), bounded in
    bytes, nesting, aliases and alias expansion (safe_yaml.py); every failure is one line."""
    from distill_export import safe_yaml
    from distill_export.files import read_regular

    path = Path(path)
    try:
        raw = read_regular(path, f"{what} {path}", safe_yaml.MAX_BYTES + 1)  # a FIFO is refused, not waited on
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > safe_yaml.MAX_BYTES:
        raise ConfigError(f"{what} {path} is larger than {safe_yaml.MAX_BYTES // 1024} KiB; a config is a few KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}): not a YAML file") from None
    try:
        data = safe_yaml.load(text)  # data only: never a loader that builds objects
    except safe_yaml.YamlRefused as exc:  # a bound, or a key given twice
        raise ConfigError(f"{what} {path} is refused: {exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        mark = getattr(exc, "problem_mark", None)  # where the parser stopped (73rd audit A1: not said)
        problem = getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        said = f"{first}: {problem}" if problem and problem not in first else first
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {said[:160]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level, got {type(data).__name__}")
    if any(not isinstance(k, str) for k in data):
        raise ConfigError(f"{what} {path}: keys must be strings, got "
                          f"{_show(next(k for k in data if not isinstance(k, str)))}")
    _check_one_spelling(data, f"{what} {path}")
    return data


def _check_one_spelling(data: dict, origin: str) -> None:
    """A setting given both nested (`teacher: {epochs: 1}`) and dotted (`teacher.epochs: 3`) in one
    file: apply_overrides would keep whichever came last, in silence (tenth audit B4)."""
    seen: dict[str, str] = {}  # dotted setting -> how it was spelled

    def walk(mapping: dict, prefix: str, spelled: str) -> None:
        for key, value in mapping.items():
            name, shown = f"{prefix}{key}", f"{spelled}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.", f"{shown}: ")
            elif name in seen:
                raise ConfigError(f"{origin} is refused: {name} is given twice (as '{seen[name]}' and as "
                                  f"'{shown}'): which one is meant?")
            else:
                seen[name] = shown

    walk(data, "", "")


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
    layers = []  # what each of recipe, file and flags set, to tell a default from a choice
    if recipe:
        data = read_yaml(recipe_path(recipe))
        data.pop("description", None)
        apply_overrides(config, data, f"recipe {recipe}")
        layers.append(data)
    user_file = read_yaml(config_file) if config_file else None
    if user_file is not None:
        layers.append(user_file)
        apply_overrides(config, user_file, str(config_file))
    if overrides:
        apply_flags(config, overrides)
        layers.append({k: v for k, v in overrides.items() if v is not None})
    if not any(sets_key(layer, "teacher.fusion") for layer in layers):
        settle_default_fusion(config)  # e.g. --task detection alone: late, not classification's concat
    validate_config(config)
    if user_file is not None:
        check_gates_of_task(config, user_file, str(config_file))
    return config


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig saved in a run directory (a mapping; anything else is a ConfigError,
    not an AttributeError from the library call: fifty-sixth audit A4)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config is a mapping of sections, got {type(data).__name__}")
    return apply_overrides(RunConfig(), data, "run config")
