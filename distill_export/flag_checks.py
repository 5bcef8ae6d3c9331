"""Flags that cannot apply to this run are refused, not recorded as if they ran (issue 24):
a setting a tune search would replace, a loaded teacher's training settings, a calibration flag
without an INT8 format, an objective flag no term reads, a control with nothing to teach,
--skip-bad-rows or data.streaming=on on a built-in dataset, another task's gate. cli/options.py and launch.py call these after the config
is loaded, with the flags the user gave (`flags`, `given`)."""

from __future__ import annotations

from distill_export.config_checks import check_search_for_task, check_tune_minutes, sets_key, tune_search_spaces
from distill_export.errors import ConfigError


# A search space -> the settings it picks: (config key, the flag that sets it or None).
_SEARCH_PICKS = {
    "rounds": (("distill.rounds", "--rounds"),),
    "mix": (("distill.mix", "--mix"), ("distill.mix_alpha", None)),
    "fusion": (("teacher.fusion", "--teacher-fusion"),),
}
_PICKS_WHAT = {"rounds": "picks 1 to 3 rounds", "mix": "picks the batch mixing and its strength",
               "fusion": "picks the teacher's fusion"}


def check_search_keeps_settings(config, given) -> None:
    """`run --tune` with a search space that picks a setting the user also set (given(key): a
    flag or --config, not the defaults or the recipe) would replace that setting in silence, or
    (the mixing) train the final student with one the search never tried."""
    if not (config.distill.tune_trials or config.distill.tune_minutes):
        return
    spaces = tune_search_spaces(config.distill.tune_search)
    for space, picks in _SEARCH_PICKS.items():
        for key, flag in picks:
            if space in spaces and given(key):
                section, name = key.split(".")
                shown = f"{flag} {getattr(getattr(config, section), name)} ({key})" if flag else key
                drop = f"{flag} (or {key} from --config)" if flag else f"{key} from --config"
                raise ConfigError(f"{shown} is set, but --tune-search includes {space} (distill.tune_search), "
                                  f"which {_PICKS_WHAT[space]} and would replace it; drop {drop}, or drop "
                                  f"{space} from --tune-search")


def check_tune_fits_task(config) -> None:
    """`run --tune`: a time budget too small to start a trial, or a search space whose trials the
    task refuses (mix, rounds on detection), fails here, before the run's folder or teacher. Not
    in validate_config: a run folder written before these checks still opens."""
    if not (config.distill.tune_trials or config.distill.tune_minutes):
        return
    check_tune_minutes(config.distill.tune_minutes, "--tune-minutes")
    check_search_for_task(config, tune_search_spaces(config.distill.tune_search), "--tune-search")


# The teacher settings only a trained teacher reads (train_teacher.py), and the flag that sets one.
TEACHER_TRAINING = {"teacher.epochs": "--teacher-epochs", "teacher.lr": None, "teacher.batch_size": None,
                    "teacher.width": None, "teacher.modality_dropout": None}


def check_loaded_teacher_settings(config, given, run_dir=None) -> None:
    """teacher.epochs, lr, batch_size, width and modality_dropout with a loaded teacher (--teacher)
    are read only by the teachers a run still trains: the self-training control's and, from round
    2, the re-fitted experts. With neither, a given one (a flag or --config, not the recipe) would
    be recorded in config.yaml as if a teacher trained with it (ninth round: width and lr too).
    run_dir: the run whose train-teacher took them (given: its state.json given_teacher_keys), for
    a distill that no longer trains the teacher they were given for (46th audit L5)."""
    if not loaded_teacher_settings_unread(config):
        return
    # fourteenth audit B4: a labels-only objective skips the control, so no teacher trains either
    control = "the self-training control is off" if not config.distill.self_training_control else \
        "the self-training control is skipped, since the objective is labels only"
    for key, flag in TEACHER_TRAINING.items():
        if given(key):
            value = getattr(config.teacher, key.split(".")[1])
            shown = f"{flag} {value} ({key})" if flag else f"{key} {value}"
            drop = f"{flag} (or {key} from --config)" if flag else f"{key} from --config"
            fix = (f"drop {drop}" if run_dir is None else
                   f"{run_dir} took it for the teacher this distill would train; keep the self-training control "
                   f"(or give distill.rounds above 1), or start a new run without {flag or key}")
            raise ConfigError(f"{shown} cannot apply: --teacher {config.teacher.path} is loaded, not trained, and "
                              f"no other teacher trains here ({control} and distill.rounds is 1); {fix}")


def loaded_teacher_settings_unread(config) -> bool:
    """A loaded teacher (teacher.path) and no teacher the run trains: no self-training control (off,
    or skipped by a labels-only objective) and one round. TEACHER_TRAINING's keys are then unread;
    tune resets them in tuned.yaml when its choice makes it so (51st audit B1)."""
    if not config.teacher.path or config.distill.rounds > 1:
        return False
    return not (config.distill.self_training_control and _objective_reads_teacher(config))


def _objective_reads_teacher(config) -> bool:
    """True when some term of the objective reads the teacher (so a control teacher would train)."""
    try:
        from distill_export.methods import teacher_needs
    except ImportError:  # a runtime-only install (no torch) trains nothing
        return True
    return bool(teacher_needs(config.distill))


def check_method_with_terms(config, given) -> None:
    """distill.method and distill.terms both in the user's --config: the terms run, so a method
    whose own objective differs would be recorded in config.yaml but never run (tenth audit B5).
    A method that names the same objective (tune writes `method: labels_only` with its terms)
    agrees with them and passes. --method as a flag replaces the terms first (config.apply_flags)."""
    if not (config.distill.terms and given("distill.method") and given("distill.terms")):
        return
    try:
        import dataclasses

        from distill_export.methods.objective import term_specs
    except ImportError:  # a runtime-only install (no torch) trains nothing
        return
    preset = term_specs(dataclasses.replace(config.distill, terms=[]))
    if [(s.name, s.weight, s.params) for s in preset] != [(s.name, s.weight, s.params) for s in term_specs(config.distill)]:
        names = ", ".join(t.get("name", "?") if isinstance(t, dict) else str(t) for t in config.distill.terms)
        raise ConfigError(f"distill.method {config.distill.method} and distill.terms ({names}) are both set in "
                          f"--config, and the terms are what runs, so {config.distill.method} would be recorded but "
                          "never run; drop distill.method, or drop distill.terms (or pass --method, which "
                          "replaces them)")


def check_flags_apply(config, flags: dict) -> None:
    """A flag given for something this run will not do is refused, not recorded as if it ran:
    the INT8 calibration settings without an INT8 format (a fresh audit found them in config.yaml
    of an FP32-only export)."""
    if flags.get("distill.tune_search") is not None and not (config.distill.tune_trials or config.distill.tune_minutes):
        raise ConfigError("--tune-search sets what `run --tune` searches, but no search runs; add --tune N "
                          "or --tune-minutes M, or drop --tune-search")
    _check_objective_flags(config, flags)
    _check_control_flag(config, flags)
    if flags.get("data.skip_bad_rows") and config.data.source in BUILT_IN_SOURCES:
        raise ConfigError(f"--skip-bad-rows (data.skip_bad_rows) skips bad rows of a manifest .csv/.jsonl, but "
                          f"data.source {config.data.source} is a built-in dataset, not a manifest; "
                          "drop --skip-bad-rows")
    int8 = _exports_int8(config)
    for key in ("export.calibration_samples", "export.calibration_method"):
        if flags.get(key) is not None and not int8:
            flag = "--" + key.split(".", 1)[1].replace("_", "-")
            raise ConfigError(f"{flag} sets {key}, which only INT8 exports read, but export.formats "
                              f"({','.join(config.export.formats)}) has none; add --format onnx-int8 or drop {flag}")


# The data sources that are no user manifest (data/__init__.py load_dataset): their rows are
# generated, so none fails validation and --skip-bad-rows has nothing to skip.
BUILT_IN_SOURCES = ("avdigits", "moving_digits")


def check_streaming_applies(config, given) -> None:
    """data.streaming=on decodes a manifest's files per sample in DataLoader workers
    (data/manifest_decode.py); a built-in dataset is generated in memory and never streams, so a
    given `on` would be recorded in config.yaml as if it had. Refused like --skip-bad-rows; `auto`
    (the default) and `off` are true of every source. Also the data settings this source never
    reads: the auto threshold, and the demo's own preprocessing (found before the 48th audit)."""
    if config.data.streaming == "on" and config.data.source in BUILT_IN_SOURCES and given("data.streaming"):
        raise ConfigError(f"data.streaming=on decodes a manifest's files in DataLoader workers, but data.source "
                          f"{config.data.source} is a built-in dataset generated in memory, which never streams; "
                          "drop data.streaming (or set it to auto) or give a manifest .csv/.jsonl as data.source")
    d = config.data
    if given("data.stream_above_mb") and (d.streaming != "auto" or d.source in BUILT_IN_SOURCES):
        why = (f"data.source {d.source} is a built-in dataset, which never streams" if d.source in BUILT_IN_SOURCES
               else f"data.streaming is {d.streaming}, which decides without it")
        raise ConfigError(f"data.stream_above_mb {d.stream_above_mb} is the size above which data.streaming auto "
                          f"streams a manifest, but {why}; drop data.stream_above_mb")
    for key in ("data.pca_variance", "data.audio_snr_db"):  # the built-in demo's own preprocessing
        if given(key) and d.source != "avdigits":
            raise ConfigError(f"{key} {_value(config, key)} shapes the built-in avdigits data alone, but data.source is "
                              f"{d.source}; drop {key}")
    if given("data.persistent_workers") and not d.num_workers:  # 65th audit A3
        raise ConfigError(f"data.persistent_workers {_value(config, 'data.persistent_workers')} sets whether "
                          "DataLoader workers stay alive between epochs, but data.num_workers is 0 (no workers); "
                          "drop data.persistent_workers or set data.num_workers")
    for key, auto in (("data.image_size", 0), ("data.image_mode", "auto"), ("data.max_audio_seconds", None)):
        if given(key) and d.source == "avdigits" and _value(config, key) != auto:  # 65th audit B1
            raise ConfigError(f"{key} {_value(config, key)} sets how a manifest's files are decoded, but data.source "
                              f"avdigits is the built-in demo, generated already decoded; drop {key}")


def _check_control_flag(config, flags: dict) -> None:
    """--self-training-control with a labels-only objective: no term reads a teacher, so a control
    teacher has nothing to teach and the control would be recorded on, then skipped. Only the flag
    is refused: a recipe's control (the demo's) with labels_only is recorded as skipped, with why."""
    if not flags.get("distill.self_training_control") or _objective_reads_teacher(config):
        return
    objective = (f"--method {config.distill.method}" if flags.get("distill.method") is not None
                 else f"distill.method {config.distill.method}" if not config.distill.terms else "distill.terms")
    raise ConfigError(f"--self-training-control (distill.self_training_control) cannot apply: {objective} is labels "
                      "only (no term reads a teacher), so a control teacher would have nothing to teach; drop "
                      "--self-training-control or choose a method that distills (e.g. --method pseudo_label)")


_OBJECTIVE_FLAGS = {"distill.temperature": "--temperature", "distill.alpha": "--alpha", "distill.beta": "--beta"}


def _check_objective_flags(config, flags: dict, in_config=None) -> None:
    """--temperature, --alpha or --beta that no term of the objective reads (methods/objective.py
    settings_read) would be recorded in config.yaml and report.json as if it had shaped the run.
    in_config(key): the user's --config sets it (twelfth audit: `distill: {temperature: 9}` with
    pseudo_label was recorded, where `-T 9` was refused)."""
    given = [k for k in _OBJECTIVE_FLAGS if flags.get(k) is not None or (in_config and in_config(k))]
    if not given:
        return
    try:
        from distill_export.methods import PRESETS, settings_read
    except ImportError:  # a runtime-only install (no torch) trains nothing
        return
    d = config.distill
    read = settings_read(d)
    for key in given:
        name = key.split(".")[1]
        if name in read:
            continue
        as_flag = flags.get(key) is not None
        flag = _OBJECTIVE_FLAGS[key] if as_flag else f"{key} from --config"
        head = (f"{_OBJECTIVE_FLAGS[key]} {getattr(d, name):g} sets {key}, but " if as_flag
                else f"{key} {getattr(d, name):g} (in --config) is set, but ")
        if d.terms:
            terms = ", ".join(str(t.get("name")) for t in d.terms)
            why = ("every term of distill.terms (" + terms + ") that takes a temperature sets its own"
                   if name == "temperature" else
                   f"distill.terms ({terms}) lists the objective with its own weights, so {key} is not read")
            raise ConfigError(head + why + f"; drop {flag}, or pass --method to run a preset instead of distill.terms")
        method = f"--method {d.method}" if flags.get("distill.method") is not None else f"distill.method {d.method}"
        names = ", ".join(("ce", *PRESETS[d.method][0]))
        why = ("no term of it takes a temperature" if name == "temperature"
               else "it has no distillation term for ce to share the weight with")
        raise ConfigError(head + f"{method} ({names}) does not read it: {why}; drop {flag} or choose another method")


def check_config_settings_apply(config, given) -> None:
    """Settings in the user's --config (or a flag) that this run would never read are refused,
    not written to config.yaml as if they had run (eleventh audit B6). Each line says what reads
    the setting and what in this run keeps it from being read."""
    _check_objective_flags(config, {}, given)  # a temperature, alpha or beta in --config that no term reads
    int8 = _exports_int8(config)
    for key in ("export.int8_recipe", "export.calibration_samples", "export.calibration_method"):
        if given(key) and not int8:
            raise ConfigError(f"{key} is read only by INT8 exports, but export.formats ({','.join(config.export.formats)}) "
                              "has none; add onnx-int8 to the formats or drop it")
    d = config.distill
    if given("distill.mix_alpha") and d.mix == "none":
        raise ConfigError(f"distill.mix_alpha {d.mix_alpha} is the strength of distill.mix, which is none here; set "
                          "distill.mix (mixup, cutmix, mixup_cutmix) or drop distill.mix_alpha")
    if given("distill.teacher_cache_dir") and d.teacher_cache_dir and not d.teacher_cache:  # 72nd audit B1
        raise ConfigError(f"distill.teacher_cache_dir {d.teacher_cache_dir} is never used here: distill.teacher_cache "
                          "is false (no cache); drop distill.teacher_cache_dir or set distill.teacher_cache true")
    if given("distill.teacher_cache_dir") and d.teacher_cache_dir and (d.augment != "none" or d.mix != "none"):
        raise ConfigError(f"distill.teacher_cache_dir {d.teacher_cache_dir} is never used here: with distill.augment "
                          f"{d.augment} and distill.mix {d.mix} the teacher runs on each batch the student sees (no "
                          "cache); drop distill.teacher_cache_dir")
    if given("data.clip_frames") and config.data.source == "avdigits":
        raise ConfigError(f"data.clip_frames {config.data.clip_frames} sets the frames of a video column, but "
                          "data.source avdigits has no video; drop data.clip_frames")
    if given("data.annotations") and config.data.annotations and config.task != "detection":
        raise ConfigError(f"data.annotations {config.data.annotations} holds a detection run's boxes, but the task "
                          f"is {config.task}; drop data.annotations or pass --task detection")
    _check_modality_dropout_read(config, given)
    if given("data.pin_memory") and config.data.pin_memory == "true" and not _cuda_run(config):  # 72nd B4
        raise ConfigError(f"data.pin_memory true pins batches for their copy to a GPU, but this run trains on the CPU "
                          f"(device {config.device}), where torch ignores it; drop data.pin_memory (auto pins on CUDA)")
    if given("distill.kd_impl") and d.kd_impl == "triton" and not _cuda_run(config):
        raise ConfigError(f"distill.kd_impl triton is the fused CUDA kernel, but this run trains on the CPU "
                          f"(device {config.device}), where the PyTorch reference runs; drop distill.kd_impl")
    _check_teacher_target_settings_read(config, given)
    _check_gates_exported(config, given)


def _check_gates_exported(config, given) -> None:
    """A precision gate in --config for a precision export.formats makes none of (validate.int8_agreement
    with onnx alone) was recorded in config.yaml and never judged (71st audit B1; `validate --gate` was
    refused already). A gate at its default is let be: a whole config written back (tuned.yaml) holds them all."""
    try:
        from distill_export.export.base import format_spec
        from distill_export.tasks import get_task
    except ImportError:  # a runtime-only install: no export here
        return
    made = {"fp32"} | {format_spec(f).precision for f in config.export.formats}  # fp32: the teacher's ONNX too
    defaults = type(config.validate)()
    for gate in get_task(config.task).gates:
        key = gate.config_key
        if gate.precision not in made and given(f"validate.{key}") and hasattr(defaults, key) \
                and getattr(config.validate, key) != getattr(defaults, key):
            raise ConfigError(f"validate.{key} judges {gate.precision} exports, but export.formats "
                              f"({','.join(config.export.formats)}) makes none; add the {gate.precision} format or "
                              f"drop validate.{key}")


def _check_modality_dropout_read(config, given) -> None:
    """teacher.modality_dropout is read by the concat classification teacher alone: late fusion's
    experts see one modality each, and the detection teachers have none to drop (47th audit MD1).
    Not refused where `run --tune` searches the fusion (its concat trials read it), nor at 0, which
    says what runs: no dropout."""
    searched = (config.distill.tune_trials or config.distill.tune_minutes) and \
        "fusion" in tune_search_spaces(config.distill.tune_search)
    if not given("teacher.modality_dropout") or config.teacher.modality_dropout == 0 or searched:
        return
    if config.teacher.path:  # 73rd audit B1: recorded, and stored in control_teacher.pt, never read
        raise ConfigError(f"teacher.modality_dropout {config.teacher.modality_dropout} cannot apply: --teacher "
                          f"{config.teacher.path} is loaded, and the teachers this run trains (the self-training control, "
                          "a later round's experts) each see one modality, with none to drop; drop teacher.modality_dropout")
    why = (f"the {config.task} teachers drop no modality" if config.task != "classification"
           else "late fusion trains one expert per modality, with none to drop" if config.teacher.fusion == "late"
           else None)
    if why:
        raise ConfigError(f"teacher.modality_dropout {config.teacher.modality_dropout} is read by the concat teacher "
                          f"alone, and {why} (teacher.fusion {config.teacher.fusion}); drop teacher.modality_dropout")


# How the teacher's targets are made: read only when some term of the objective reads the teacher.
_TEACHER_TARGETS = ("distill.teacher_view", "distill.teacher_cache", "distill.teacher_cache_dir")


def _check_teacher_target_settings_read(config, given) -> None:
    """distill.teacher_view / teacher_cache / teacher_cache_dir with an objective that reads no
    teacher, or distill.kd_impl with no term that runs the KD loss: config.yaml would record how
    targets were made, or which kernel ran, where none were (found before the 48th audit). Not
    refused under `run --tune`, whose trials read the teacher."""
    if config.distill.tune_trials or config.distill.tune_minutes:
        return
    try:
        unread = settings_no_term_reads(config)
    except ImportError:  # a runtime-only install (no torch) trains nothing
        return
    from distill_export.methods.objective import term_specs

    objective = "distill.terms" if config.distill.terms else f"distill.method {config.distill.method}"
    names = ", ".join(s.name for s in term_specs(config.distill))
    for key in filter(given, unread):
        if key == "distill.kd_impl":
            raise ConfigError(f"distill.kd_impl {config.distill.kd_impl} picks the KD loss's kernel, but {objective} "
                              f"({names}) has no term that runs it (kd, ls_kd); drop distill.kd_impl")
        raise ConfigError(f"{key} {_value(config, key)} sets how the teacher's targets are made, but {objective} "
                          f"({names}) reads no teacher; drop {key}")


def settings_no_term_reads(config) -> list[str]:
    """The distill keys the objective of `config` never reads: how the teacher's targets are made
    (where no term reads the teacher), and kd_impl (where no term runs the KD loss). tune resets
    them in tuned.yaml when its choice leaves them unread (49th audit T1)."""
    from distill_export.methods.objective import term_class, term_specs

    unread = [] if _objective_reads_teacher(config) else list(_TEACHER_TARGETS)
    if not any(hasattr(term_class(s.name), "impl") for s in term_specs(config.distill)):
        unread.append("distill.kd_impl")
    return unread


def _value(config, key: str):
    """A dotted key's value as YAML writes it (false, not False)."""
    section, name = key.split(".")
    value = getattr(getattr(config, section), name)
    return str(value).lower() if isinstance(value, bool) else value


def _exports_int8(config) -> bool:
    """Whether an INT8 format is asked for: the only exports that read the calibration settings."""
    return any("int8" in f for f in config.export.formats)


def _cuda_run(config) -> bool:
    """Whether training runs on CUDA (device cuda, or auto with a GPU)."""
    if config.device == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return config.device.startswith("cuda") or torch.cuda.is_available()


def check_gates_of_task(config, data: dict, where: str = "") -> None:
    """A --config or a run's config.yaml (`data`, as read) that sets another task's gate to a value
    of its own (fp32_map50_delta on a classification run) would be recorded and never read (45th
    audit G2, 46th G7). A whole config written back (tuned.yaml) holds every gate at its default:
    those are let be. where: the file named first in the message ("": the caller names it)."""
    from distill_export.tasks import get_task, task_names

    own = {g.config_key for g in get_task(config.task).gates}
    defaults = type(config.validate)()
    for task in task_names():
        for gate in get_task(task).gates:
            key = gate.config_key
            if key in own or not sets_key(data, f"validate.{key}") or not hasattr(defaults, key):
                continue
            if getattr(config.validate, key) != getattr(defaults, key):
                raise ConfigError(f"{where + ': ' if where else ''}validate.{key} is a gate of the {task} task, but "
                                  f"this run's task is {config.task}, which never reads it; drop it")
