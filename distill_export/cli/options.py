"""The command-line options. Each option that sets a config key names it once, in FLAGS.

A new flag for an existing config key is one line in FLAGS: its names, the key, the type, the
help, and the commands that take it. `config_flags(command)` adds those options to a command
and hands it `overrides` ({dotted key: value} of the flags given); limits and the values a key
accepts are checked by config validation (config.py), never restated here. Help texts name
their choices with placeholders filled from the registries (help.py).

Options that set no config key are declared below FLAGS and listed in NOT_CONFIG.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

RUN, TEACHER, DISTILL, EXPORT = "run", "train-teacher", "distill", "export"
TRAIN = (RUN, TEACHER, DISTILL)


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets one config key."""

    names: str  # the option's names, space-separated: "--temperature -T"
    key: str  # the dotted config key it sets
    type: type
    help: str  # {placeholders} are filled from the registries (help.py)
    commands: tuple[str, ...]  # the commands that take it
    show_default: bool = True

    @property
    def param(self) -> str:
        """The Python parameter name: the first long name, "--label-fraction" -> label_fraction."""
        return self.names.split()[0].split("/")[0].lstrip("-").replace("-", "_")

    def annotation(self):
        # A number is parsed as a person writes it: click's int()/float() read "1_0" as 10 and
        # "١" as 1 (eleventh audit), a typo run as another value.
        parser = {"parser": _plain(self.type)} if self.type in (int, float) else {}
        option = typer.Option(*self.names.split(), help=self.help, show_default=self.show_default, **parser)
        return Annotated[Optional[self.type], option]


def _plain(kind):
    from distill_export.config_checks import plain_number

    def parse(text):
        if isinstance(text, kind) and not isinstance(text, bool):  # a default, already a number
            return text
        try:
            return plain_number(text, kind)
        except ValueError:
            raise typer.BadParameter(f"{str(text)!r} is not a plain {'integer' if kind is int else 'number'} "
                                     "(ASCII digits, no '_')") from None
    parse.__name__ = kind.__name__
    return parse


FLAGS = (
    Flag("--out -o", "out", Path, "Run directory (default runs/<timestamp>).", (RUN, TEACHER)),
    Flag("--student", "student.name", str, "Student architecture: {students}, or package.module:factory.",
         (RUN, DISTILL)),
    Flag("--student-init", "student.init_weights", Path, "Initial student weights: our checkpoint, or a local "
         "torchvision or timm state_dict (.pt/.pth/.safetensors; timm's resnet18 and mobilenetv3_small_100). "
         "A head of another class count is replaced.", (RUN, DISTILL)),
    Flag("--teacher", "teacher.path", str, "A teacher to use instead of training one: our checkpoint (.pt), a "
         "torch.export program (.pt2), or package.module:factory.", (RUN, TEACHER)),
    Flag("--teacher-weights", "teacher.weights", Path, "Weights for a package.module:factory teacher (state_dict "
         ".pt or .safetensors).", (RUN, TEACHER)),
    Flag("--device", "device", str, "{devices}.", TRAIN),
    Flag("--task", "task", str, "What the student predicts: {tasks} (tasks/; default classification).", TRAIN),
    Flag("--seed", "seed", int, "Seed for initialisation, batching and which labels are kept.", TRAIN),
    Flag("--epochs", "distill.epochs", int, "Epochs for the student and the baseline (same budget).", (RUN, DISTILL)),
    Flag("--teacher-epochs", "teacher.epochs", int, "Epochs for the teacher.", (RUN, TEACHER)),
    Flag("--teacher-fusion", "teacher.fusion", str, "How the teacher combines modalities: {fusions} (concat: one "
         "MLP over the concatenated embeddings; late: a product of per-modality experts; detection: "
         "late fuses a clip's frames after a shared encoder, early stacks them as channels).", (RUN, TEACHER)),
    Flag("--temperature -T", "distill.temperature", float, "KD temperature T > 0.", (RUN, DISTILL)),
    Flag("--alpha", "distill.alpha", float, "Weight of the hard-label CE term, in [0, 1].", (RUN, DISTILL)),
    Flag("--beta", "distill.beta", float, "Weight of feature distillation (0 = off).", (RUN, DISTILL)),
    Flag("--method", "distill.method", str, "Distillation method (a preset of terms): {methods}. distill.terms "
         "in --config lists terms explicitly; --method replaces them.", (RUN, DISTILL)),
    Flag("--augment", "distill.augment", str, "Student input augmentation: {choices} (shift: the teacher then "
         "runs online; no teacher-output cache).", (RUN, DISTILL)),
    Flag("--tune", "distill.tune_trials", int, "Search the objective on the validation split for N trials "
         "(then confirm with fresh seeds) after the teacher and before distilling; the report says what was chosen "
         "and why. 0: off.", (RUN,), show_default=False),
    Flag("--tune-minutes", "distill.tune_minutes", float, "Search the objective for at most M minutes (alone: "
         "as many trials as fit; with --tune N: whichever ends first). report.json says how many ran.",
         (RUN,), show_default=False),
    Flag("--tune-search", "distill.tune_search", str, "What --tune searches: terms (the objective) or "
         "terms,mix (also the batch mixing and its strength, each scored against a baseline with the same "
         "mixing).", (RUN,), show_default=False),
    Flag("--mix", "distill.mix", str, "Batch mixing for the student and the baseline: {choices} (the teacher "
         "sees the same mixed batch: consistent teaching; no teacher-output cache).", (RUN, DISTILL)),
    Flag("--self-training-control/--no-self-training-control", "distill.self_training_control", bool,
         "Also distill from an image-only teacher of the same size (what unlabeled rows give without the other "
         "modality).", (RUN, DISTILL), show_default=False),
    Flag("--rounds", "distill.rounds", int, "Distillation rounds: from round 2 the teacher is the previous student "
         "times experts of the other modalities re-fitted on the rows it labeled (co-training).",
         (RUN, DISTILL), show_default=False),
    Flag("--compile", "distill.compile", bool, "torch.compile the student's training module (CUDA).", (RUN,),
         show_default=False),
    Flag("--label-fraction", "data.label_fraction", float, "Fraction of training labels kept; the rest are "
         "unlabeled rows the student distills on.", (RUN, TEACHER)),
    Flag("--data", "data.source", str, "avdigits (built-in demo), moving_digits (built-in detection clips) or a "
         "manifest .csv/.jsonl: one column per modality, label, optional split.", (RUN, TEACHER)),
    Flag("--student-modality", "data.student_modality", str, "The modality (manifest column) the student sees, "
         "e.g. image.", (RUN, TEACHER)),
    Flag("--skip-bad-rows", "data.skip_bad_rows", bool, "Skip manifest rows that fail validation instead of "
         "stopping.", (RUN, TEACHER), show_default=False),
    Flag("--format --formats", "export.formats", str, "Comma-separated export formats: {formats}.", (RUN, EXPORT)),
    Flag("--opset", "export.opset", int, "ONNX opset for the export (>= {min_opset}).", (EXPORT,)),
    Flag("--exporter", "export.exporter", str, "torch ONNX exporter: dynamo (torch.export, TorchScript as its "
         "fallback) or torchscript (the older tracer: much faster, deprecated upstream).", (RUN, EXPORT)),
    Flag("--calibration-samples", "export.calibration_samples", int, "Training rows that calibrate INT8 "
         "(default 256).", (EXPORT,)),
    Flag("--calibration-method", "export.calibration_method", str, "INT8 calibration: {calibration_methods}.",
         (EXPORT,)),
)


def flags_for(command: str) -> list[Flag]:
    return [f for f in FLAGS if command in f.commands]


def overrides(**params) -> dict[str, Any]:
    """{config key: value} of the flags given, by parameter name; None means 'not given'."""
    keys = {f.param: f.key for f in FLAGS}
    return {keys[p]: (str(v) if isinstance(v, Path) else v) for p, v in params.items() if v is not None}


def config_flags(command: str):
    """Give the decorated command FLAGS' options for `command`, in place of its `overrides`
    parameter, and call it with overrides={config key: value} of the flags given."""
    flags = flags_for(command)

    def decorate(fn):
        own = list(inspect.signature(fn, eval_str=True).parameters.values())
        at = [p.name for p in own].index("overrides")
        added = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.annotation())
                 for f in flags]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at + 1:]]
        params = own[:at] + added + rest

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = {f.param: kwargs.pop(f.param, None) for f in flags}
            return fn(*args, overrides=overrides(**given), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def load(recipe: str | None, config_file: Path | None, flags: dict):
    """The config of a new run: defaults, the recipe (default avdigits), --config, then the flags."""
    from distill_export.config import RunConfig, load_config, read_yaml
    from distill_export.config_checks import sets_key
    from distill_export.preflight import COLUMN_SETTINGS
    from distill_export.flag_checks import (TEACHER_TRAINING, check_config_settings_apply, check_flags_apply,
                                            check_loaded_teacher_settings, check_method_with_terms,
                                            check_search_keeps_settings, check_streaming_applies,
                                            check_tune_fits_task)
    from distill_export.preflight import settle_teacher_fusion

    config = load_config(recipe or "avdigits", config_file, flags)
    from_file = read_yaml(config_file) if config_file else {}
    # What the recipe alone gives: a --config that repeats it (a run's own config.yaml, which
    # records every key) sets nothing new, so nothing in it is refused as "cannot apply".
    recipe_only = load_config(recipe or "avdigits", None, {}) if from_file else None
    # A run's config.yaml or tuned.yaml records every key, from its own recipe or the defaults: in such a
    # file a value of the default recipe or of RunConfig is no one's setting (`run --config tuned.yaml` of
    # an AV-MNIST run was refused for pca_variance 0.25, `--recipe avmnist --config RUN/config.yaml` of a
    # default run for 0.75: 49th audit). A hand-written --config sets what it names.
    recorded = []
    if _records_every_key(from_file):
        default_recipe = recipe_only if (recipe or "avdigits") == "avdigits" else load_config("avdigits", None, {})
        recorded = [default_recipe, RunConfig()]

    def given(key: str) -> bool:  # the user set it: a flag, or --config to another value than the recipe's
        return flags.get(key) is not None or (sets_key(from_file, key) and all(
            _value(config, key) != _value(other, key) for other in (recipe_only, *recorded)))

    fusion_key = next(f.key for f in FLAGS if f.param == "teacher_fusion")  # the key --teacher-fusion sets
    fusion_given = given(fusion_key) and ("--config" if flags.get(fusion_key) is None else "flag")
    settle_teacher_fusion(config, fusion_given)  # with a loaded teacher: refused, or recorded as it ran
    check_flags_apply(config, flags)  # e.g. --calibration-samples without an INT8 format
    check_search_keeps_settings(config, given)  # e.g. --rounds 3 that --tune-search rounds would replace
    check_tune_fits_task(config)  # e.g. --tune-search mix on detection, --tune-minutes 1e-9
    check_loaded_teacher_settings(config, given)  # --teacher-epochs with a loaded teacher and nothing to train
    check_streaming_applies(config, given)  # data.streaming=on with the built-in avdigits: nothing would stream
    check_method_with_terms(config, given)  # distill.method dkd beside distill.terms [kd]: dkd would not run
    check_config_settings_apply(config, given)  # e.g. distill.mix_alpha with mix none, int8_recipe without INT8
    # what a check after the data loads turns off where it cannot apply, unless the user set it
    control_key = next(f.key for f in FLAGS if f.param == "self_training_control")  # preflight.settle_control
    # (and the loaded teacher's training settings, which a later distill may leave unread: run_outputs)
    config.given_keys = frozenset(key for key in (control_key, fusion_key, *TEACHER_TRAINING, *COLUMN_SETTINGS)
                                  if given(key))
    return config


def _value(config, key: str):
    """The dotted `key` of a RunConfig (distill.mix_alpha -> config.distill.mix_alpha)."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _records_every_key(data: dict) -> bool:
    """Whether a --config mapping names every key a run's config.yaml records (RunConfig.to_dict)."""
    from distill_export.config import RunConfig
    from distill_export.config_checks import sets_key

    def keys(d: dict, prefix: str = ""):
        for k, v in d.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else (f"{prefix}{k}",)

    return bool(data) and all(sets_key(data, key) for key in keys(RunConfig().to_dict()))


# ----- options that set no config key ---------------------------------------------------------
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="Safe-YAML config; flags override it.")]
Recipe = Annotated[Optional[str], typer.Option("--recipe", help="A shipped recipe by name: {recipes}.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Nproc = Annotated[Optional[int], typer.Option("--nproc", help="Train with N data-parallel processes on this machine (launches torchrun: one per GPU, or up to one per CPU core).")]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run in this directory: finished stages are reused, training continues from its last epoch checkpoint. Flags and --config must match the run's config.yaml.")]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory written by an earlier stage.")]
Gate = Annotated[Optional[list[str]], typer.Option("--gate", help="Override a parity gate, NAME=VALUE (repeatable): {gates}.")]

# Parameter names of the options above and of `tune` and `profile`, which read a run directory
# or files rather than build a config. A new option goes into FLAGS or here.
NOT_CONFIG = {
    "config": "the config file itself", "recipe": "the recipe itself", "quiet": "progress bars",
    "resume": "the run to resume", "nproc": "the process count torchrun is launched with",
    "run_dir": "the run directory a stage works in", "gate": "validate.* keys by gate name (the run's task's gates)",
    # tune: the search budget and where its YAML goes
    "trials": "tune", "minutes": "tune", "methods": "tune", "out_file": "tune", "confirm_top": "tune",
    "confirm_seeds": "tune", "search": "tune",
    # profile: files and run directories, measured with these settings
    "targets": "profile", "target": "profile", "threads": "profile", "batch": "profile", "backend": "profile",
    "device": "profile", "input_shape": "profile", "warmup": "profile", "min_time": "profile",
    "min_iters": "profile", "out_dir": "profile", "max_call_s": "profile",
}
