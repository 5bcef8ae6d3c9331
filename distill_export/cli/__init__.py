"""The `distill-export` command line: one module per command, composed here.

Commands parse options and call the library (launch.py starts runs, pipeline/ runs stages);
options.py maps each flag to its config key once; guard.py turns typed errors into one-line
messages and exit codes (2: bad input, 1: a parity gate failed).
"""

from __future__ import annotations

import typer

from distill_export import interrupts
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
    """The console script. A usage error (an option's value of the wrong type, an unknown
    option, a missing argument) is one line and exit 2, like every other bad input, instead of
    click's usage box; the rest is what Typer does."""
    import sys

    try:  # Typer >= 0.25 vendors click; older ones use click itself
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError

    try:
        code = app(standalone_mode=False)  # click returns an Exit's code instead of exiting
    except UsageError as exc:
        where = f" (see distill-export {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
        print(f"error: {exc.format_message()}{where}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C at a prompt
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    interruption = interrupts.unreported()
    if interruption is not None:  # Ctrl-C or SIGTERM before a command's guard ran: typer exits 130 silently
        code = interrupts.report(interruption)
    sys.exit(code if isinstance(code, int) else 0)
