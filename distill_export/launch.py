"""Starting a run: everything between a built config and the first stage.

    load_data(config)          the process's device and seed, the data, preflight.check_data
    start_run(config, stages)  preflight.check_config -> check_free -> load_data -> RunDir.create:
                               whatever can refuse the config does so before the run directory exists
    open_run(run_dir, ...)     a run directory an earlier stage wrote, with flags applied to its config
    resume_config(run_dir,...) the run to resume; flags or --config that change it are refused
    relaunch_under_torchrun / torchrun_rank   --nproc N: the command again under torchrun (once
                               preflight_for_ranks has run start_run's checks here), and one rank of it

The command line (cli/) parses options and calls these; pipeline/'s stages call load_data when
they run alone.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from distill_export.config import RunConfig
from distill_export.config_edits import check_hand_edits, differences
from distill_export.errors import ConfigError, DistillExportError
from distill_export.rundir import RUN_STAGES, RunDir


def load_data(config: RunConfig):
    """(data, device) for this process: under torchrun it joins the process group and gets
    cuda:LOCAL_RANK (or the CPU); the data is checked against the student and teacher."""
    from distill_export import distributed as ddp
    from distill_export.data import load_dataset
    from distill_export.device import resolve_device, seed_everything
    from distill_export.preflight import check_data
    from distill_export.tasks import get_task

    if ddp.launched_by_torchrun() and not ddp.in_run_command():
        raise ConfigError("under torchrun only `distill-export run` trains in parallel; run the stage "
                          "commands (train-teacher, distill, ...) in one process")
    device = ddp.init_from_env(config.device) if ddp.launched_by_torchrun() else resolve_device(config.device)
    seed_everything(config.seed)
    data = load_dataset(config.data, config.seed, get_task(config.task).targets())  # the task reads the labels
    check_data(config, data)
    return data, device


def start_run(config: RunConfig, stages: tuple[str, ...] = RUN_STAGES):
    """(run, data, device) of a new run directory at config.out, made only once the config, the
    folder (a folder of the user's files or a run is refused) and the data have passed their
    checks; RunDir.create is an atomic claim, one run per folder. A run of every stage records
    how long the data took to load (report.json timings.data)."""
    from distill_export.preflight import check_config
    from distill_export.rundir import check_free

    check_config(config)
    check_free(config.out)  # before the data loads
    started = time.perf_counter()
    data, device = load_data(config)
    loaded_s = round(time.perf_counter() - started, 3)
    from distill_export import distributed as ddp

    ddp.barrier()  # under torchrun: no run directory unless every rank's data and models passed
    run = RunDir.create(config.out, fresh=True, stages=stages)
    if tuple(stages) == RUN_STAGES:
        run.update_report(timings={"data": loaded_s})
    return run, data, device


def open_run(run_dir: Path, overrides: dict | None = None, command: str | None = None):
    """(run, config) of a run directory an earlier stage wrote, `overrides` (dotted keys) applied.
    command: the stage the caller runs again; a hand edit of config.yaml for a done stage before
    it is refused (config_edits)."""
    from distill_export.config import apply_flags, validate_config
    from distill_export.flag_checks import check_flags_apply

    run = RunDir.existing(run_dir)
    config = run.load_config()
    if command is not None:
        check_hand_edits(run, run_dir, config.to_dict(), command)
    if command in ("distill", "export"):  # they read the data again
        run.check_same_data(config.data.source, config.data.annotations)
    before = config.to_dict()
    apply_flags(config, overrides or {})  # --method replaces the run's distill.terms
    config.given_keys = frozenset(overrides or {})  # a flag of this command is the user's (preflight.settle_control)
    if command is not None:  # e.g. `distill RUN --seed 5`: the teacher stage ran with seed 0 (before the
        # config's own checks, whose advice names flags this command does not take: `--task detection`)
        check_hand_edits(run, run_dir, config.to_dict(), command, written=before, flag=True)
    validate_config(config)
    check_flags_apply(config, overrides or {})
    if command == "distill":  # e.g. --no-self-training-control: train-teacher took --teacher-epochs for the control
        from distill_export.flag_checks import check_loaded_teacher_settings

        check_loaded_teacher_settings(config, run.given_teacher_keys().__contains__, run_dir)
    return run, config


def _same_file(a: dict, b: dict, key: str) -> bool:
    """A file setting written another way (`./m.csv` for `m.csv`, or absolute) names the same file:
    not a change (twenty-first audit A4). config.yaml keeps the run's own spelling."""
    if key not in ("data.source", "teacher.path", "student.init_weights"):
        return False
    section, name = key.split(".")
    x, y = (a.get(section) or {}).get(name), (b.get(section) or {}).get(name)
    try:
        return isinstance(x, str) and isinstance(y, str) and Path(x).is_file() and Path(x).samefile(y)
    except (OSError, ValueError):
        return False


def resume_config(run_dir: Path, recipe: str | None, config_file, overrides: dict):
    """(run, config) of the run to resume; overrides (dotted keys) or a config file that change
    its config.yaml are refused, naming the keys."""
    from distill_export.config import _show, apply_flags, config_from_dict, load_config, validate_config

    if overrides.get("out") is not None:
        raise DistillExportError("--resume continues the run in its own directory; drop --out")
    run = RunDir.resumable(run_dir)
    saved = run.load_config()
    check_hand_edits(run, run_dir, saved.to_dict())
    run.check_same_data(saved.data.source, saved.data.annotations)  # the manifest the teacher stage read (or began to)
    if recipe or config_file:  # a whole config: compare all of it
        wanted = load_config(recipe or "avdigits", config_file, overrides)
    else:  # flags only: they must agree with the run's values
        wanted = apply_flags(config_from_dict(saved.to_dict()), overrides)
        validate_config(wanted)
    a, b = saved.to_dict(), wanted.to_dict()
    diff = [k for k in differences(a, b) if not _same_file(a, b, k)]
    if diff:
        def value(d, key):
            for part in key.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            return _show(d, 40)

        shown = "; ".join(f"{k}: run {value(a, k)}, given {value(b, k)}" for k in diff[:6])
        more = f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise DistillExportError(f"--resume {run_dir}: the config differs from the run's config.yaml in "
                                 f"{len(diff)} key{'s' * (len(diff) > 1)} ({shown}{more}); resume without "
                                 "them, or start a new run with `--out NEW`")
    if (run.stages() or {}).get("distill", {}).get("status") != "done":  # config.yaml edited to drop the control
        from distill_export.flag_checks import check_loaded_teacher_settings

        check_loaded_teacher_settings(saved, run.given_teacher_keys().__contains__, run_dir)
    return run, saved


def resume_restarts(run: RunDir, config: RunConfig) -> dict[str, str]:
    """{checkpoint label: why it is not continued} for the first stage `run --resume` runs. A
    training continues from its checkpoint only when the checkpoint was written with the settings
    it runs with now (distill_runs.training_checkpoint's key, train.Checkpoint); after an edit of
    config.yaml (or a stage command stopped before it saved its config) it starts from epoch 1,
    and the summary says so, naming the keys that changed since the stage started (its state entry
    holds that config)."""
    import torch

    from distill_export.distill_runs import training_checkpoint
    from distill_export.rundir import STAGE_CHECKPOINTS

    _, todo = run.resume_plan()
    if not todo:
        return {}
    started = ((run.stages() or {}).get(todo[0]) or {}).get("config")
    shaping = ("seed", "device", "data", "teacher", "student", "distill")  # what the checkpoint key covers
    changed = [k for k in differences(started, config.to_dict()) if k.split(".")[0] in shaping] \
        if isinstance(started, dict) else []
    why = {}
    for label in STAGE_CHECKPOINTS.get(todo[0], ()):
        path = run.checkpoint_path(label)
        if not path.is_file():
            continue
        try:
            key = str(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("key", ""))
        except Exception:  # noqa: BLE001 - the training warns about it and starts afresh
            why[label] = "its checkpoint is unreadable"
            continue
        if not key.startswith(training_checkpoint(config, run, label).key + "|"):
            why[label] = ("its checkpoint was written with other settings"
                          + (f" (changed since: {', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''})"
                             if changed else ""))
    return why


# ----- --nproc: data-parallel training under torchrun ---------------------------------------------


def relaunch_under_torchrun(nproc: int, config: RunConfig, argv: list[str]) -> None:
    """Run this command line again under torchrun with nproc processes (argv without --nproc:
    the children are the ranks), once every check start_run makes has passed here, in this
    process (preflight_for_ranks). A rank's failure is raised here as one DistillExportError."""
    from distill_export import distributed as ddp

    ddp.check_nproc(nproc, config.device)
    preflight_for_ranks(config)
    at = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    argv = argv[:at] + argv[at + (1 if "=" in argv[at] else 2):]  # torchrun's children run without it
    ddp.launch_torchrun(nproc, argv)


def preflight_for_ranks(config: RunConfig) -> None:
    """What start_run refuses, refused before torchrun starts: the config, --out, the data
    and the student and teacher files (load_data's checks), and what N processes cannot run
    (preflight.check_parallel). The data is loaded here once more and let go, so a bad row is
    one line from this process, not one per rank under torchrun's traceback."""
    import gc

    from distill_export.preflight import check_config, check_parallel
    from distill_export.rundir import check_free

    check_config(config)
    check_parallel(config)
    check_free(config.out)
    data, _ = load_data(config)
    del data
    gc.collect()  # the ranks load their own copy


@contextmanager
def torchrun_rank(config: RunConfig):
    """One process of `torchrun -m distill_export run ...`: yields (run, data, device, is_main).
    Rank 0 is the run (its directory, its report, export/validate/profile); the other ranks
    train their shards beside it in a scratch directory that is deleted afterwards (every
    collective is inside the training stages). Leaves the process group on the way out."""
    import os
    import shutil
    import tempfile

    from distill_export import distributed as ddp

    ddp.enter_run_command()
    main = int(os.environ["RANK"]) == 0
    scratch = None if main else tempfile.mkdtemp(prefix=f"distill-export-rank{os.environ['RANK']}-")
    if scratch is not None:
        config.out = str(Path(scratch) / "run")
    try:
        run, data, device = start_run(config)  # joins the process group (distributed.init_from_env)
        yield run, data, device, main
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        ddp.shutdown()
