"""The `distill-export` command line: one module per command, composed here.

Commands parse options and call the library (launch.py starts runs, pipeline.py runs stages);
options.py maps each flag to its config key once; guard.py turns typed errors into one-line
messages and exit codes (2: bad input, 1: a parity gate failed).
"""

from __future__ import annotations

import typer

from distill_export.cli import distill, export, profile, report, run, train_teacher, tune, validate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Distill a multimodal teacher into a small single-modality student, export it, "
    "prove the export computes what the student computes, profile it, and report.",
)
for command in (run, train_teacher, distill, tune, export, validate, profile, report):  # the order of --help
    app.add_typer(command.app)


def main() -> None:
    app()
