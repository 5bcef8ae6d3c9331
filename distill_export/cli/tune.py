"""`distill-export tune RUN`: search the distillation settings on the validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill_export.cli.guard import guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import Quiet, RunDirArg

app = typer.Typer()

Trials = Annotated[int, typer.Option("--trials", help="Trials to run (budget).")]
Minutes = Annotated[Optional[float], typer.Option("--minutes", help="Stop after this many minutes (budget).")]
TuneMethods = Annotated[Optional[str], typer.Option("--methods", help="Comma-separated presets to search (default: every preset that uses the teacher): {methods}.")]
# a str, not a Path: Path("newdir/") drops the slash that says a folder was meant
TuneOut = Annotated[Optional[str], typer.Option("--out", "-o", help="Where to write the best config (default RUN/tuned.yaml, rewritten only if an earlier tune wrote it).")]
Search = Annotated[str, typer.Option("--search", help="What the trials vary: terms (the objective), or terms,mix (also the batch mixing and its strength; a mixing trial is scored against a baseline trained with the same mixing).")]
ConfirmTop = Annotated[int, typer.Option("--confirm-top", help="Completed trials to re-train with fresh seeds after the search (best first).")]
ConfirmSeeds = Annotated[int, typer.Option("--confirm-seeds", help="Fresh training seeds for each confirmed trial and the labels-only baseline; the objective is chosen by its mean. 0: off (the best trial's own score decides).")]


@app.command(cls=HelpCommand)
@guarded
def tune(run_dir: RunDirArg, trials: Trials = 30, minutes: Minutes = None, methods: TuneMethods = None,
         out_file: TuneOut = None, confirm_top: ConfirmTop = 3, confirm_seeds: ConfirmSeeds = 3,
         search: Search = "terms", quiet: Quiet = False):
    """Search the distillation method, weights, T and thresholds on the validation split (Optuna),
    then re-train the top trials and the labels-only baseline with fresh seeds and choose by the mean.

    Writes the choice as YAML for `distill-export run --config` (labels only where no objective is
    confirmed above the baseline); the test split is not read.
    """
    from distill_export.config_checks import check_search_for_task, tune_search_spaces
    from distill_export.confirm import ConfirmSpec
    from distill_export.launch import open_run
    from distill_export.tune import TuneBudget, candidate_methods, tune as run_tune

    budget = TuneBudget(trials, minutes)
    budget.check()  # a bad budget fails before the data loads
    confirm_spec = ConfirmSpec(confirm_top, confirm_seeds)
    confirm_spec.check()
    spaces = tune_search_spaces(search)  # an unknown space fails before the data loads
    names = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    candidate_methods(names)  # --methods "," or labels_only alone leave nothing to search: refused now
    if out_file is not None:  # a user file or one of the run directory files is never replaced
        from distill_export.rundir import check_new_file

        check_new_file(out_file, run_dir)  # the text as typed: a trailing '/' names a folder
        out_file = Path(out_file).expanduser()
    rd, cfg = open_run(run_dir, None, command="distill")
    # a teacher.pt replaced after train-teacher: the trials would learn from another teacher (46th audit P3)
    rd.require_stages(("train_teacher",), "tune")
    check_search_for_task(cfg, spaces, "--search")  # e.g. mix or rounds on a detection run: before any trial
    path = out_file or rd.file("tuned.yaml")
    if out_file is None:  # the run's own tuned.yaml: rewritten only if an earlier tune wrote it
        from distill_export.tune import check_default_output

        check_default_output(Path(path))
    with rd.lock():  # tune.json and the teacher cache are written into the run: one command at a time
        summary = run_tune(cfg, rd, names, budget, Path(path), quiet, confirm_spec, search=spaces)
    best = summary["best"]
    from distill_export.tasks import get_task

    score = get_task(cfg.task).score_name  # accuracy, or mAP50 for detection (the trials' val score)
    out.print(f"best of {summary['completed']} trials ({summary['pruned']} pruned, {summary['seconds']:.0f} s): "
              f"{best['method']}, validation {score} {100 * best['val_accuracy']:.1f}%")
    if summary["confirmation"] is not None:
        out.print(f"confirmation ({summary['confirm_seconds']:.0f} s): {summary['decision']['line']}", highlight=False)
    else:
        out.print(summary["decision"]["line"], highlight=False)
    out.print(f"config: {path}  (use: distill-export run --config {path} --out NEW)", highlight=False)
