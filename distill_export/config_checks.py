"""Checks of a RunConfig: every number finite and in range, names that must be among the
registries' (terms, tasks, formats) and the fixed choices. `validate_config` runs after every
load and after resume's overrides; a failure is one ConfigError line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
from typing import Any

from distill_export.errors import ConfigError

# The smallest distillation temperature (distill.temperature, a term's temperature). Kept here as
# a number: this module imports no torch, so methods/base.py repeats it (a test keeps them equal).
MIN_TEMPERATURE = 0.01


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (choices: {', '.join(choices)})"


def _show(value: Any, limit: int = 80) -> str:
    """repr(value) for an error message, cut to `limit` characters (a value can be huge)."""
    short = reprlib.Repr()  # bounded walk: a huge or deeply nested value is never expanded in full
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = limit, limit, 8, 8, 3
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----- numeric ranges -------------------------------------------------------------------------
# (low, high, low_inclusive, high_inclusive). Every int/float config value is finite; these
# bound them. Exact dotted keys first, then the last part of the key (so a new field named
# like these is covered without an edit here); any other number only has to be finite.
_INF = float("inf")
_AT_LEAST_1 = (1, 1_000_000, True, True)
_FRACTION = (0.0, 1.0, True, True)
_RANGES: dict[str, tuple] = {
    "seed": (0, 2**32 - 1, True, True),  # numpy's seed range
    "data.label_fraction": (0.0, 1.0, False, True),
    "data.pca_variance": (0.0, 1.0, False, True),
    "data.audio_snr_db": (-100.0, 100.0, True, True),
    "data.image_size": (0, 4096, True, True),
    "data.max_train_rows": (0, _INF, True, True),
    "data.clip_frames": (1, 999, True, True),
    "teacher.width": (1, 4096, True, True),
    "teacher.modality_dropout": _FRACTION,
    "distill.alpha": _FRACTION,
    "distill.mix_alpha": (0.0, 100.0, False, True),  # Beta(a, a): a > 0
    "distill.tune_trials": (0, 100_000, True, True),  # 0 = no search
    "distill.tune_minutes": (0.0, 10_080.0, True, True),  # a week at most; 0 = no time limit
    "distill.beta": (0.0, 1e6, True, True),
    "distill.rounds": (1, 10, True, True),
    "export.opset": (17, 99, True, True),  # the upper end is refined by the installed onnx below
    "export.calibration_samples": (1, 10_000_000, True, True),
    "validate.fp32_max_abs": (0.0, 1e6, True, True),
    "validate.fp32_agreement": _FRACTION,
    "validate.fp16_agreement": _FRACTION,
    "validate.int8_agreement": _FRACTION,
    "validate.int8_max_accuracy_drop": _FRACTION,
    "validate.fp32_map50_delta": _FRACTION,
    "validate.fp32_matched": _FRACTION,
    "validate.fp16_map50_delta": _FRACTION,
    "validate.fp16_matched": _FRACTION,
    "validate.int8_map50_delta": _FRACTION,
    "validate.int8_matched": _FRACTION,
    "profile.threads": (0, 4096, True, True),  # 0 = all cores
    "profile.min_iters": (1, 10_000_000, True, True),
    "profile.warmup_s": (0.0, 3600.0, True, True),
    "profile.min_time_s": (0.0, 3600.0, True, True),
    "profile.max_call_s": (0.0, 86400.0, False, True),  # 0 would refuse every model
    "validate.max_call_s": (0.0, 86400.0, False, True),
}
_RANGES_BY_NAME: dict[str, tuple] = {
    "epochs": (1, 100_000, True, True),
    "lr": (0.0, 100.0, False, True),
    "batch_size": _AT_LEAST_1,
    "batch_sizes": _AT_LEAST_1,
    "batches": _AT_LEAST_1,
    # below ~0.01 the logits / T overflow to inf in float32 and training goes NaN (a subnormal
    # -T 1e-320 passed and was blamed on the learning rate); methods.base.MIN_TEMPERATURE is the same
    "temperature": (MIN_TEMPERATURE, 1000.0, True, True),
    "weight_decay": (0.0, 100.0, True, True),
    "weight": (0.0, 1e6, True, True),
    "seed": (0, 2**32 - 1, True, True),
}
_SECONDS = (0.0, 86_400.0, True, True)  # keys ending in _s
_NONEMPTY = {"validate.batch_sizes", "profile.batches", "profile.threads", "export.formats"}
_NO_REPEATS = {"validate.batch_sizes", "profile.batches", "profile.threads"}  # [1, 1] ran batch 1 once


# ----- string choices -------------------------------------------------------------------------
# The values a string key accepts (registries such as students, methods and formats check their
# own names). The CLI's help texts read these.
DEVICES = ("auto", "cpu", "cuda")
CHOICES: dict[str, tuple[str, ...]] = {
    "data.image_mode": ("auto", "grayscale", "rgb"), "data.text_encoder": ("hashed", "wordllama"),
    "distill.augment": ("none", "shift", "crop"),
    "distill.mix": ("none", "mixup", "cutmix", "mixup_cutmix"), "data.streaming": ("auto", "on", "off"),
    "data.pin_memory": ("auto", "true", "false"), "distill.amp": ("bf16", "off"),
    "teacher.fusion": ("concat", "late", "early"),  # each task takes some (Task.teacher_fusions)
}


def plain_number(text: str, kind=float):
    """A number as a person writes it: ASCII digits, no '_'. Python's int()/float() also read
    "1_0" as 10 and Arabic-Indic "١" as 1, so a typo became another value in silence (tenth and
    eleventh audits). Raises ValueError naming why."""
    text = str(text).strip()
    if "_" in text or not text.isascii():
        raise ValueError(f"{text!r} is not a plain number (ASCII digits, no '_')")
    return kind(text)


def value_range(key: str) -> tuple | None:
    """(low, high, low_inclusive, high_inclusive) of a numeric key, or None: what validation allows."""
    return _range_for(key)


def check_value(key: str, value) -> None:
    """One number against the range validation gives `key` (a CLI value before it is applied)."""
    _check_number(key, value, _range_for(key))


def _range_for(key: str):
    name = key.rsplit(".", 1)[-1]
    if key in _RANGES:
        return _RANGES[key]
    for suffix, rng in _RANGES_BY_NAME.items():
        if name == suffix or name.endswith("_" + suffix):
            return rng
    return _SECONDS if name.endswith("_s") else None


def _interval(rng) -> str:
    lo, hi, lo_in, hi_in = rng
    fmt = lambda v: "inf" if v == _INF else f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"{'[' if lo_in else '('}{fmt(lo)}, {fmt(hi)}{']' if hi_in else ')'}"


def _check_number(key: str, value, rng) -> None:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if rng is None:
        return
    lo, hi, lo_in, hi_in = rng
    if value < lo or value > hi or (value == lo and not lo_in) or (value == hi and not hi_in):
        raise ConfigError(f"{key} must be in {_interval(rng)}, got {_show(value)}")


def _check_finite_nested(key: str, value) -> None:
    """Numbers inside free-form values (lists of mappings such as distill.terms) must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_nested(f"{key}.{_show(k, 40).strip(chr(39))}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite_nested(f"{key}[{i}]", v)


def check_numbers(config, prefix: str = "") -> None:
    """Walk the dataclass fields: every int/float (and list of them) finite and in range."""
    for f in dataclasses.fields(config):
        key = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value, key + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(key, value, _range_for(key))
        elif isinstance(value, list):
            if key in _NONEMPTY and not value:
                raise ConfigError(f"{key} must not be empty")
            if key in _NO_REPEATS and (twice := [v for i, v in enumerate(value) if v in value[:i]]):
                raise ConfigError(f"{key} names {twice[0]!r} twice; each is measured once")  # 75th audit A1
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                for v in value:
                    _check_number(key, v, _range_for(key))
            else:
                _check_finite_nested(key, value)


def check_strings(config, prefix: str = "") -> None:
    """Every string (and list of strings) a config holds must be one the OS can take: paths
    (out, student.init_weights, teacher.path, data.source...) reach os calls, where a NUL byte is
    a ValueError traceback, and no name or choice has a use for one either."""
    from distill_export.files import unusable_path

    for f in dataclasses.fields(config):
        key = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_strings(value, key + ".")
            continue
        for text in value if isinstance(value, list) else [value]:
            problem = unusable_path(text) if isinstance(text, str) else None
            if problem:
                raise ConfigError(f"{key} {_show(text)} {problem}")


def _check_opset(opset: int) -> None:
    """No higher than the installed onnx knows (a typo like 99 fails now, not after training)."""
    try:
        import onnx

        newest = int(onnx.defs.onnx_opset_version())
    except Exception:  # noqa: BLE001 - no onnx (a runtime-only install): the export stage says so
        return
    low = _RANGES["export.opset"][0]
    if isinstance(opset, int) and not low <= opset <= newest:  # the table's [17, 99] named 99, then refused it
        raise ConfigError(f"export.opset must be in [{low}, {newest}] ({newest}: the newest the installed onnx "
                          f"{onnx.__version__} knows), got {opset}")


def validate_config(config) -> None:
    """A RunConfig (config.py, which imports this module) can run: one ConfigError otherwise."""
    _check_opset(config.export.opset)  # its range with the installed onnx's newest, before the table's
    check_numbers(config)  # every number finite and in range, named by its key, before anything else
    check_strings(config)  # no NUL byte in a path (or any string): one line, not an os call's traceback
    if not 0.0 < config.data.label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {config.data.label_fraction}")
    if config.distill.temperature < MIN_TEMPERATURE:
        raise ConfigError(f"distill.temperature must be >= {MIN_TEMPERATURE}, got {config.distill.temperature}")
    if not 0.0 <= config.distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], got {config.distill.alpha}")
    if config.distill.beta < 0:
        raise ConfigError(f"distill.beta must be >= 0, got {config.distill.beta}")
    try:
        from distill_export.methods import check_objective_for_task, term_specs
    except ImportError:
        # The terms are torch modules. A runtime-only install (validate/profile ONNX files on an
        # edge box, no torch) never trains, so it has no objective to check.
        term_specs = None
    if term_specs is not None:  # unknown terms/presets, bad weights or hyperparameters fail now
        _check_alpha_leaves_a_term(config.distill, term_specs(config.distill))
    _check_task(config)
    if term_specs is not None:
        check_objective_for_task(config.distill, config.task)  # e.g. dkd (or hinton) for detection
    if config.distill.teacher_view not in ("full", "student"):
        raise ConfigError(f"distill.teacher_view must be full or student, got {_show(config.distill.teacher_view)}")
    for key, allowed in CHOICES.items():
        value = getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {_show(value)}")
    spaces = tune_search_spaces(config.distill.tune_search)  # distill.tune_search: an unknown space fails now
    if "fusion" in spaces and config.teacher.path and (config.distill.tune_trials or config.distill.tune_minutes):
        raise ConfigError(f"distill.tune_search includes fusion, which trains a teacher of each fusion, but the "
                          f"teacher is a loaded file (teacher.path {config.teacher.path}); drop fusion from the search")
    for key in ("image_size", "max_train_rows", "num_workers", "stream_above_mb"):  # 72nd A4: the key named
        if getattr(config.data, key) < 0:
            raise ConfigError(f"data.{key} must be >= 0, got {getattr(config.data, key)}")
    if config.data.clip_frames % 2 == 0:
        raise ConfigError(f"data.clip_frames must be odd (the clip is centred on its target frame), "
                          f"got {config.data.clip_frames}")
    if config.device not in DEVICES:
        raise ConfigError(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {_show(config.device)}")
    from distill_export.export.base import ExportOptions, parse_formats

    parse_formats(config.export.formats)  # an unknown format fails now, not after training
    ExportOptions.from_config(config.export)  # calibration method and sample count
    _check_teacher_weights(config.teacher)
    for name in ("epochs",):
        for section in (config.teacher, config.distill):
            if getattr(section, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


def _check_teacher_weights(teacher) -> None:
    """teacher.weights is loaded into a package.module:factory teacher only (nets/external.py): with
    a checkpoint, a .pt2 or a teacher the run trains it would be recorded in config.yaml, never applied."""
    if not teacher.weights:
        return
    try:
        from distill_export.nets.external import is_factory
    except ImportError:  # a runtime-only install (no torch) loads no teacher
        return
    if teacher.path and is_factory(teacher.path):
        return
    what = f"--teacher {teacher.path} is not one" if teacher.path else "the run trains its own teacher"
    raise ConfigError(f"--teacher-weights {teacher.weights} (teacher.weights) is loaded into a package.module:factory "
                      f"teacher only, and {what}: it would never be applied; drop --teacher-weights")


# What `tune` can search (tune.py): "terms" always; "mix" adds distill.mix and distill.mix_alpha;
# "fusion" the teacher (the run's own, or one of each other fusion its task takes); "rounds" 1-3
# distillation rounds.
TUNE_SEARCH_SPACES = ("terms", "mix", "fusion", "rounds")


# What a trial of each space may set that a task can refuse (Task.check_config): the space is
# refused as that value is, before any folder or teacher (detection: no mixing, one round).
_TRIAL_SETTINGS = {"mix": ("mix", "mixup"), "rounds": ("rounds", 2)}
# The least time budget a search takes, in minutes: under it the study's clock would run out
# before its first trial starts (optuna checks the clock before each trial), so nothing completes.
MIN_TUNE_MINUTES = 0.01


def check_tune_minutes(minutes: float | None, flag: str) -> None:
    """A time budget (0 or None: no limit) below MIN_TUNE_MINUTES is refused naming `flag`."""
    if minutes and minutes < MIN_TUNE_MINUTES:
        raise ConfigError(f"{flag} {minutes:g} is below the least search budget, {MIN_TUNE_MINUTES:g} minutes: "
                          f"no trial would start; give {flag} {MIN_TUNE_MINUTES:g} or more")


def check_search_for_task(config, spaces, flag: str) -> None:
    """Each search space against the run's task: a space whose trials would set a value the task
    refuses (--mix, --rounds on detection) is refused with the task's own reason, naming `flag`."""
    try:
        from distill_export.tasks import get_task
    except ImportError:  # a runtime-only install (no torch) never tunes
        return
    import copy

    task = get_task(config.task)
    for space in spaces:
        if space not in _TRIAL_SETTINGS:
            continue
        key, value = _TRIAL_SETTINGS[space]
        trial = copy.deepcopy(config)
        setattr(trial.distill, key, value)
        try:
            task.check_config(trial)
        except ConfigError as exc:
            raise ConfigError(f"{flag} includes {space}, whose trials set distill.{key}, but task {config.task} "
                              f"cannot take it ({exc}); drop {space} from {flag}") from None
        except ImportError:  # no torch: nothing to train, nothing to check
            return


def tune_search_spaces(spec) -> tuple[str, ...]:
    """"terms" or "terms,mix" (a comma list, or a list) -> the checked tuple, "terms" first and always."""
    items = [str(n).strip() for n in (spec.split(",") if isinstance(spec, str) else (spec or []))]
    if not items or "" in items:  # "," or "" would search the terms alone and record ',' (twenty-first audit B8)
        raise ConfigError(f"tune search spaces {_show(spec)} has an empty item: name each space once, comma-separated "
                          f"(choices: {', '.join(TUNE_SEARCH_SPACES)}; e.g. terms,mix)")
    names = items
    for n in names:
        if n not in TUNE_SEARCH_SPACES:
            raise ConfigError(f"tune search space {_show(n)} is unknown (choices: {', '.join(TUNE_SEARCH_SPACES)})")
    return tuple(dict.fromkeys(["terms", *names]))


def settle_default_fusion(config) -> None:
    """teacher.fusion that no recipe, file or flag set: the task's first fusion where the default
    (concat, a classification fusion) is not one the task takes (detection: late)."""
    try:
        from distill_export.tasks import get_task

        fusions = get_task(config.task).teacher_fusions
    except (ImportError, ConfigError):  # no torch, or an unknown task: validate_config says so
        return
    if config.teacher.fusion not in fusions:
        config.teacher.fusion = fusions[0]


def _check_task(config) -> None:
    try:
        from distill_export.tasks import get_task
    except ImportError:  # a runtime-only install (no torch) never trains: nothing to check
        return
    task = get_task(config.task)  # an unknown task fails now, naming the registered ones
    try:
        task.check_config(config)  # e.g. a classifier student or teacher.fusion=concat for detection
    except ImportError:  # no torch: nothing to train, nothing to check
        return


def sets_key(data, key: str) -> bool:
    """Whether a config mapping sets the dotted `key`, nested ({teacher: {fusion: late}}) or dotted."""
    if not isinstance(data, dict):
        return False
    head, _, rest = key.partition(".")
    return key in data or (bool(rest) and sets_key(data.get(head), rest))


def _check_alpha_leaves_a_term(distill, specs) -> None:
    """alpha 1 weighs a preset's distillation terms 1 - alpha = 0, so they are dropped: `--method hinton
    --alpha 1` trained on labels alone while config.yaml said hinton (forty-sixth audit A1, A2). An
    explicit term of weight 0 is dropped as well, while config.yaml would list it (47th audit Z1)."""
    for i, term in enumerate(distill.terms or []):  # specs passed: each weight reads as a float
        if float(term.get("weight", 1.0)) == 0:
            raise ConfigError(f"distill.terms[{i}] ({_show(term.get('name'), 40)}) has weight 0, so it would never "
                              "run while config.yaml lists it; give it a weight above 0, or drop it from distill.terms")
    if not distill.terms and distill.method != "labels_only" and all(s.name == "ce" for s in specs):
        # (named by its key: it may come from --config, not the flag: 47th audit L3)
        raise ConfigError(f"distill.alpha {distill.alpha:g} (--alpha) leaves method {distill.method} no distillation "
                          "term (they weigh 1 - alpha = 0), so it would train on the labels alone; give an alpha "
                          "below 1, or method labels_only")
