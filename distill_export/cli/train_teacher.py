"""`distill-export train-teacher`: stage 1 into a new run directory."""

from __future__ import annotations

import typer

from distill_export.cli.guard import guarded, out
from distill_export.cli.help import HelpCommand
from distill_export.cli.options import ConfigFile, Quiet, Recipe, config_flags, load

app = typer.Typer()


@app.command("train-teacher", cls=HelpCommand)
@guarded
@config_flags("train-teacher")
def train_teacher(config: ConfigFile = None, recipe: Recipe = None, overrides: dict = None, quiet: Quiet = False):
    """Stage 1: train the multimodal teacher (or evaluate --teacher) into a new run directory."""
    from distill_export import launch
    from distill_export.pipeline import stage_train_teacher

    cfg = load(recipe, config, overrides)
    rd, data, device = launch.start_run(cfg, stages=("train_teacher",))  # checked before it is made
    try:
        with rd.lock():  # a stage command on this new run meanwhile is refused
            stage_train_teacher(cfg, rd, quiet, data, device)
            rd.save_config(cfg)  # written by the stage that succeeded, with the settings it used
    except Exception:
        rd.discard()  # this command made the folder and finished nothing in it
        raise
    out.print(f"teacher written to {rd.path}")
