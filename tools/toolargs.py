"""Numeric argument checks shared by the scripts under tools/.

Each check is an argparse `type=`: a bad value is refused while the command line is parsed,
before any training, export or file is written. `Parser` prints that refusal as the house
error, one line `error: argument --flag: ...` on stderr and exit 2 (argparse's own adds a usage
line and the script's name)."""

from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <message>`, exit 2."""

    def error(self, message: str):  # argparse's contract: never returns
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


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
