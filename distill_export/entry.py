"""The console script (`distill-export`, `python -m distill_export`): its first code runs before
torch, typer and the commands are imported. Ctrl-C or SIGTERM during those imports (a second or
more on a cold disk) used to print an import's KeyboardInterrupt traceback, or end with no line;
now it is one line and exit 130 or 143, as during a command (fourteenth audit B2). A signal that
arrives before Python runs any code of ours still gets the default: exit 143 or 130, silently."""

from __future__ import annotations

import sys

from distill_export import interrupts


def main() -> None:
    interrupts.install()
    try:
        from distill_export.cli import main as cli_main

        cli_main()
    except SystemExit:
        raise
    except BaseException as exc:
        interruption = interrupts.interruption_inside(exc) or interrupts.unreported()
        if interruption is None:
            raise
        sys.exit(interrupts.report(interruption))
