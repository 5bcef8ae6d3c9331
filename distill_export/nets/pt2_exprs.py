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
    nonzero even odd
""".split())
_GENERATED = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[A-Za-z0-9_]+$")  # torch's generated sympy functions
_SYMBOL = re.compile(r"[a-z]{1,3}[0-9]+$")  # s0, u3, ps1, zuf0, ...
_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|'(?P<quoted>[A-Za-z_][A-Za-z0-9_]*)'"
    r"|[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|\*\*|//|<=|>=|==|!=|[-+*/%(),=<>&|~]")
MAX_EXPR_CHARS = 10_000
MAX_DIGITS = 15
MAX_EXPONENT = 64
_POWERS = {"Pow", "PowByNatural", "FloatPow"}


def bad_part(expr) -> str | None:
    """What in `expr` torch.export.save would not write (None: nothing)."""
    if not isinstance(expr, str):
        return f"a {type(expr).__name__}, not a string"
    if len(expr) > MAX_EXPR_CHARS:
        return f"{len(expr)} characters"
    if "__" in expr:
        return "'__'"
    pos, powers, numbers = 0, 0, []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            return repr(expr[pos:pos + 20])
        name, text = m.group("name"), m.group(0)
        if name is not None and name not in _FUNCTIONS and not _GENERATED.match(name) and not _SYMBOL.match(name):
            return repr(name)
        powers += text == "**" or name in _POWERS
        if text[0].isdigit():
            numbers.append(text)
        pos = m.end()
    # sympy evaluates numbers exactly: 9**9**9**9 passed the names and ran forever (twenty-fourth
    # audit B1). A shape needs one small power at most (s0**2), and no huge literal.
    if any(len(n) > MAX_DIGITS for n in numbers):
        return f"a number of more than {MAX_DIGITS} digits"
    if powers > 1 or (powers and any(float(n) > MAX_EXPONENT for n in numbers)):
        return "a power beyond what a shape needs"
    return None


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
