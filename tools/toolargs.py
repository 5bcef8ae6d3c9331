"""Numeric argument checks shared by the scripts under tools/.

Each check is an argparse `type=`: a bad value is refused while the command line is parsed,
before any training, export or file is written. `Parser` prints that refusal as the house
error, one line `error: argument --flag: ...` on stderr and exit 2 (argparse's own adds a usage
line and the script's name). `one_line_errors` wraps each tool's main so that the product's own
refusals (a DistillExportError from anywhere in the tool's work) are that same line too."""

from __future__ import annotations

import argparse
import functools
import math
import sys


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <message>`, exit 2."""

    def error(self, message: str):  # argparse's contract: never returns
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def fail(message: str):
    """Bad input found by a tool's own checks (a missing data folder): `error: <message>` on
    stderr and exit 2, as the CLI does. sys.exit("error: ...") exits 1 (thirtieth audit B1, B2)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def one_line_errors(main):
    """Decorate a tool's main: a DistillExportError raised anywhere under it (RunDir.create on an
    unwritable --out, RunDir.existing on a folder that is no run, a bad config) is bad input, so
    it is `error: <its first line>` on stderr and exit 2 (the error's own exit_code, as the CLI
    does: a broken parity gate stays 1), never a traceback. The twentieth audit found tools that
    caught it only around their up-front checks (B4, B6). An OSError (a full disk) is one line and
    exit 2 as well; on any failure, what a data generator wrote into its --out is removed again
    (output_paths.check_tool_output's remove_on_failure). Any other exception is a bug and keeps its
    traceback. main's return value is passed through (some return a Path to their tests)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM raised where the tool is, as Ctrl-C
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(*args, **kwargs)
        except BaseException as exc:
            outputs = sys.modules.get("distill_export.output_paths")  # loaded once the tool checked its --out
            if outputs is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None)):
                outputs.remove_partial()  # a data generator's half-written --out (thirty-seventh audit B6)
            files = sys.modules.get("distill_export.files")
            if isinstance(exc, KeyboardInterrupt):  # one line and the shell's code, as the CLI (49th audit I1, I2)
                product = sys.modules.get("distill_export.interrupts")  # its SIGTERM, if the product is loaded
                terminated = isinstance(exc, _Terminated) or (product is not None and isinstance(exc, product.Terminated))
                print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
                raise SystemExit(143 if terminated else 130) from None
            if not isinstance(exc, Exception):
                raise
            full = files.full_disk_inside(exc) if files is not None else None
            if full is not None or isinstance(exc, OSError):  # a full disk: one line, not a traceback (B6)
                error = full or exc
                where = f" ({error.filename})" if getattr(error, "filename", None) else ""
                print(f"error: {error.strerror or error}{where}", file=sys.stderr)
                raise SystemExit(2) from None
            # distill_export.errors is looked up, not imported: a tool that never imported the
            # product (make_demo_audio without a checkout on sys.path) cannot raise its errors.
            errors = sys.modules.get("distill_export.errors")
            if errors is None or not isinstance(exc, errors.DistillExportError):
                raise
            text = str(exc).strip()
            print(f"error: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
            raise SystemExit(getattr(exc, "exit_code", 2)) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return wrapped


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the tool is (the product's interrupts.Terminated; a tool may run without it)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def at_least(minimum: int, maximum: int | None = None):
    """An integer >= minimum, and <= maximum when given (counts, repeats, rows, threads)."""
    wanted = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def check(text: str) -> int:
        value = _number(text, int)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {wanted}, got {value}")
        return value
    check.__name__ = f"integer {wanted}"  # what argparse names in its own messages
    return check


def int_list(minimum: int):
    """A comma list of integers, each >= minimum ("1,8,32")."""
    one = at_least(minimum)

    def check(text: str) -> str:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give a comma list such as 1,8")
        for item in items:
            one(item)
        return ",".join(items)
    check.__name__ = f"comma list of integers >= {minimum}"
    return check


def choice_list(choices):
    """A comma list of names, each one of `choices` ("bf16,fp32")."""
    def check(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r}; choose from {', '.join(choices)}")
        return items
    check.__name__ = "comma list"
    return check


def shape_list(text: str) -> list[tuple[int, ...]]:
    """A comma list of shapes written NxC ("256x1000,32x32768"), each dim an integer >= 1."""
    one = at_least(1)
    shapes = []
    for item in text.split(","):
        dims = item.strip().lower().split("x")
        if len(dims) != 2:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not NxC (e.g. 256x1000)")
        shapes.append(tuple(one(d) for d in dims))
    return shapes


def positive(text: str) -> float:
    """A finite number > 0 (seconds, bandwidths)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value:g}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0 (a mean count, a fraction of variance that may be 0)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value:g}")
    return value


def probability(text: str) -> float:
    """A probability, in [0, 1]."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {value:g}")
    return value


def fraction(text: str) -> float:
    """A fraction, in (0, 1]."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {value:g}")
    return value


def finite(text: str) -> float:
    """Any finite number (a signal-to-noise ratio in dB)."""
    return _number(text, float)


def named_once(ap, args, *names: str) -> None:
    """Each list flag names a value once: a value given twice was measured twice, or one measurement
    printed twice (58th audit A2, 61st B2, A1, A3). One line, exit 2, before any work."""
    for name in names:
        values = getattr(args, name) or []
        if len(set(values)) < len(values):
            ap.error(f"argument --{name.replace('_', '-')}: a value is named twice ({' '.join(map(str, values))})")


def dotted_sets(items: list[str], taken: dict[str, str], error) -> dict:
    """{dotted.key: value} of --set items, each value read as safe YAML; a key in `taken` is refused
    with its words there (what sets it, and what to do), as `error(message)`."""
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise error(f"--set {item!r} is not dotted.key=value")
        if key in taken:
            raise error(f"--set {key}=... {taken[key]}")
        out[key] = yaml.safe_load(value)
    return out
