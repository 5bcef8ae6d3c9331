"""Shape expressions in a `.pt2` program, checked before torch reads them.

torch.export.load hands every `expr_str` of models/*.json to sympy.sympify, which evaluates it
as Python: `(__import__('os').system('...') and 0) or Symbol('s40', ...)` in a program's shape
expression ran a shell command from `profile F.pt2` and `--teacher F.pt2` (twenty-third audit B1).
What torch.export.save writes is a small language: sympy calls from torch's list and sympy's
own (Symbol, Max, ...), torch's symbol names (s0, u3, ...), quoted plain names, numbers and
operators. Anything else (a dunder, a dot, a bracket, an unknown name) is refused, naming it.
"""

from __future__ import annotations

import re

# torch._export.serde.serialize's sympy_functions, and the sympy names its printer writes.
_FUNCTIONS = frozenset("""
    FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat
    TruncToInt RoundToInt RoundDecimal ToFloat Identity
    Symbol Integer Rational Float Max Min Abs Pow Mul Add Eq Ne Lt Le Gt Ge StrictLessThan
    StrictGreaterThan LessThan GreaterThan And Or Not Piecewise ITE floor ceiling sqrt oo zoo
    True False true false positive negative integer nonnegative nonpositive real finite zero
    nonzero even odd precision
""".split())
_GENERATED = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[A-Za-z0-9_]+$")  # torch's generated sympy functions
_SYMBOL = re.compile(r"[a-z]{1,3}[0-9]+$")  # s0, u3, ps1, zuf0, ...
_NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|'(?P<quoted>[A-Za-z_][A-Za-z0-9_]*)'"
    rf"|'-?(?P<quoted_number>{_NUMBER})'"  # Float('1.5', precision=53), as sympy.srepr writes it
    rf"|(?P<number>{_NUMBER})|\*\*|//|<=|>=|==|!=|[-+*/%(),=<>&|~]")
MAX_EXPR_CHARS = 10_000
MAX_DIGITS = 15  # before the decimal point
MAX_NUMBER_CHARS = 40  # a whole literal, fraction and exponent included
MAX_EXPONENT = 64
MAX_DECIMAL_EXPONENT = 30  # 1e-99999999999 kept mpmath busy for 10 minutes (twenty-sixth audit B2)
MAX_PRECISION = 1000  # Float(2, 9999999): sqrt(2) to ten million digits took 40 s (B1)
_PRECISION_ARGS = {"Float", "RoundDecimal"}  # their arguments after the first: digits or bits
MAX_OPERANDS = 128  # symbols and numbers in one expression (mobilenet_v3 with dynamic H, W: 10 at most)
MAX_DEPTH = 32  # nested parentheses
MAX_MINMAX_TERMS = 8  # arguments of one Max(...) or Min(...), those of a Max inside it included
# sympy's cost in units: a symbol, number or constant, a call or parenthesis, and k**2 for a Max of
# k terms (it compares every pair); ~0.3-0.4 ms a unit at worst, measured. A budget for the whole
# program, about a minute of sympy at worst (SIGTERM works there: it is Python): a
# mobilenet_v3_small exported with dynamic batch, height and width costs 10,734 (693
# expressions), so a program 18 times its size still loads.
MAX_PROGRAM_COST = 200_000
_POWERS = {"Pow", "PowByNatural", "FloatPow"}
_MINMAX = {"Max", "Min"}
_CONSTANTS = {"oo", "zoo", "true", "false", "True", "False"}  # values: they cost sympy work like a number


def bad_part(expr) -> str | None:
    """What in `expr` torch.export.save would not write (None: nothing)."""
    return scan(expr)[0]


def scan(expr) -> tuple[str | None, int]:
    """(what torch.export.save would not write or None, sympy's cost of parsing it in operand units)."""
    if not isinstance(expr, str):
        return f"a {type(expr).__name__}, not a string", 0
    if len(expr) > MAX_EXPR_CHARS:
        return f"{len(expr)} characters", 0
    if "__" in expr:
        return "'__'", 0
    pos, powers, numbers, operands, cost = 0, 0, [], 0, 0
    calls: list[list] = []  # open parentheses: [the function called or None, its arguments so far]
    previous = previous_text = None
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            return repr(expr[pos:pos + 20]), 0
        name, text = m.group("name"), m.group(0)
        if name is not None and name not in _FUNCTIONS and not _GENERATED.match(name) and not _SYMBOL.match(name):
            return repr(name), 0
        if (text in ("*", "**") and previous_text in ("(", ",")) or (text == "(" and previous_text == ")"):
            # Max(*(s1, ..., s1799)) or (Max)(...): arguments no count can see; torch writes neither
            return repr(f"{previous_text}{text}"), 0
        powers += text == "**" or name in _POWERS
        number = m.group("number") or m.group("quoted_number")
        precision = calls[-1][0] if calls and calls[-1][0] in _PRECISION_ARGS and calls[-1][1] > 1 else None
        if precision and not number and not text.isspace() and text not in (",", ")", "=") and name != "precision":
            # Float(2, (9999999)) or Float(2, 999*999): a precision is a plain number (twenty-eighth audit B1)
            return f"a {precision} precision that is not a plain number", 0
        if number:
            numbers.append(number)
            if precision and float(number) > MAX_PRECISION:
                return f"a {precision} precision of more than {MAX_PRECISION}", 0
        if number or m.group("quoted") or (name is not None and (_SYMBOL.match(name) or name in _CONSTANTS)):
            operands += 1
        elif text == "(":
            calls.append([previous, 1])
            cost += 1  # a call sympy evaluates: sqrt( nested 31 deep cost 3 ms (twenty-seventh audit P1)
            if len(calls) > MAX_DEPTH:
                return f"parentheses nested deeper than {MAX_DEPTH}", 0
        elif text == "," and calls:
            calls[-1][1] += 1
        elif text == ")" and calls:
            function, args = calls.pop()
            if function in _MINMAX:
                if calls and calls[-1][0] in _MINMAX:  # Max(a, Max(b, c)) is Max(a, b, c) to sympy
                    calls[-1][1] += args - 1
                elif args > MAX_MINMAX_TERMS:
                    return f"a Max or Min of more than {MAX_MINMAX_TERMS} terms", 0
                else:
                    cost += args * args
        if not text.isspace():
            previous, previous_text = name, text
        pos = m.end()
    if operands > MAX_OPERANDS:
        return f"more than {MAX_OPERANDS} terms", 0
    # sympy evaluates numbers exactly: 9**9**9**9 passed the names and ran forever (twenty-fourth
    # audit B1), and so did Integer(1e999999999) (twenty-fifth B1). A shape needs one small power
    # at most (s0**2), and no huge literal.
    if any(abs(_exponent(n)) > MAX_DECIMAL_EXPONENT for n in numbers):
        return f"a number with a decimal exponent beyond {MAX_DECIMAL_EXPONENT}", 0
    if any(len(_integer_part(n)) > MAX_DIGITS or len(n) > MAX_NUMBER_CHARS or float(n) >= 10.0 ** MAX_DIGITS
           for n in numbers):
        return f"a number of more than {MAX_DIGITS} digits", 0
    if powers > 1 or (powers and any(float(n) > MAX_EXPONENT for n in numbers)):
        return "a power beyond what a shape needs", 0
    return None, operands + cost


def _integer_part(number: str) -> str:
    """The digits before the point: a double's repr has 17 after it (Float('0.69999999999999996'),
    as torch writes interpolate's scale 0.7; refused as 19 digits by the twenty-sixth round: P2)."""
    return number.lower().partition("e")[0].partition(".")[0]


def _exponent(number: str) -> int:
    """The decimal exponent written in a number: 3 for 1.5e3, 0 for 42."""
    head, _, tail = number.lower().partition("e")
    return int(tail) if tail else 0


def expressions(value):
    """Every `expr_str` value in parsed program JSON (a shape expression torch will sympify)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "expr_str":
                    yield child
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
