"""--input-shape and --batch checked against what a model file declares, before anything is timed:
an ONNX file's or checkpoint's per-sample dims, and a .pt2 program's dynamic dims (their ranges,
dims exported as one symbol, derived dims such as 2*h). A contradiction would be recorded in
profile.json as the shape measured while the model ran at another: refused in one line."""

from __future__ import annotations

from distill_export.errors import ConfigError


def check_given_shape(given: tuple[int, ...] | None, path, inputs: dict[str, list], fills: bool) -> None:
    """--input-shape against a model file's declared per-sample inputs (name -> dims; a dim that is
    not a positive int is dynamic). fills: the runtime feeds the flag's dims to an input with a
    dynamic dim (ONNX), which must keep its static ones; otherwise (checkpoints, engines) the flag
    is never fed, so it must equal every input. A contradiction would be recorded in profile.json
    as the shape measured while the model ran at its own: refused in one line."""
    if given is None:
        return
    dims = {n: [d if isinstance(d, int) and d > 0 else None for d in ds] for n, ds in inputs.items()}
    show = lambda ds: ",".join("?" if d is None else str(d) for d in ds)  # noqa: E731
    flexible = {n: ds for n, ds in dims.items() if None in ds} if fills else {}
    if flexible:  # the flag fills their dynamic dims; the fully static inputs keep their own
        bad = {n: ds for n, ds in flexible.items()
               if len(ds) != len(given) or any(d is not None and d != g for d, g in zip(ds, given))}
        if bad:
            name, ds = next(iter(bad.items()))
            raise ConfigError(f"--input-shape {show(given)} contradicts {path}: its input {name!r} is [batch, {show(ds)}] "
                              "('?' dynamic) and the flag sets only the dynamic dims; keep the static ones "
                              f"({show(ds)} with each ? given) or drop --input-shape")
        return
    if dims and all(ds == list(given) for ds in dims.values()):
        return
    declared = "; ".join(f"{n!r} [batch, {show(ds)}]" for n, ds in dims.items()) or "not declared"
    only = next(iter(dims.values())) if len(dims) == 1 else None
    inputs_are = "inputs are" if len(dims) > 1 else "input is"
    what = "fixed" if fills else "what it runs at (the flag sets only an ONNX file's dynamic dims)"
    raise ConfigError(f"--input-shape {show(given)} contradicts {path}, whose {inputs_are} {declared}, {what}: profile.json "
                      "would record the flag's shape for a measurement at the model's own; drop --input-shape"
                      + (f" or give {show(only)}" if only and None not in only else ""))


def check_ranges(path, fill, shapes: dict, ranges: dict, exprs: dict | None = None, batches=(1,)) -> None:
    """--input-shape inside each dynamic dim's range, and the dims' relations kept (guards are off after
    loading): 128x128 (27th audit PR1), 16x20 for H == W (28th B6), 8x20 for W == 2*H (29th B1) were timed."""
    flag = f"--input-shape {','.join(map(str, fill))}"
    for name, dims in shapes.items():
        for i, (size, bounds) in enumerate(zip(dims, ranges.get(name, ())[1:])):
            if size is not None and bounds is not None:  # None: a flag of another rank (check_given_shape)
                check_range(path, flag, [size], name, i + 1, bounds)
    for batch in batches:
        _check_relations(path, flag, shapes, exprs or {}, batch)


def _check_relations(path, flag: str, shapes: dict, exprs: dict, batch: int) -> None:
    """Dims exported as one symbol given one size, the batch included (twenty-ninth B3), and a
    derived dim (2*h) given what it derives to."""
    import sympy

    fed = [(name, i, expr, size) for name, per_dim in exprs.items()
           for i, (expr, size) in enumerate(zip(per_dim, [batch, *shapes.get(name, [])]))
           if expr is not None and size is not None]
    where = lambda name, i: "the batch" if i == 0 else f"{name!r} dim {i}"  # noqa: E731
    given = f"{flag} at --batch {batch}"
    known: dict = {}
    for name, i, expr, size in fed:
        if isinstance(expr, sympy.Symbol):
            first = known.setdefault(expr, (name, i, size))
            if first[2] != size:
                raise ConfigError(f"{given} gives {where(*first[:2])} and {where(name, i)} different sizes "
                                  f"({first[2]}, {size}); {path} was exported with them equal")
    values = {symbol: v[2] for symbol, v in known.items()}
    derived = [(name, i, expr, size) for name, i, expr, size in fed if not isinstance(expr, sympy.Symbol)]
    _solve_roots(derived, values, lambda name, i, expr, size: (
        f"{given} gives {where(name, i)} the size {size}, but {path} was exported with it equal to {expr}, "
        f"which no whole number makes {size}"))
    for name, i, expr, size in derived:
        want = expr.subs(values)
        if want.is_number and int(want) != size:
            raise ConfigError(f"{given} gives {where(name, i)} the size {size}, but {path} was exported with "
                              f"it equal to {expr} = {int(want)} (from the other dims)")


def _solve_roots(derived: list, values: dict, no_root) -> None:
    """Values for the symbols that are no dim themselves (H = h+1, W = 2*h: thirtieth audit B3),
    from the derived dims linear in one unknown symbol, until none is left to solve; `values` gains
    them. A dim no whole number of its symbol gives (2*h fed 17) is refused: no_root(dim) -> message.
    Non-linear expressions (h//2, Max) are left unsolved: their relation is then not checked."""
    import sympy

    solved = True
    while solved:
        solved = False
        for name, i, expr, size in derived:
            unknown = expr.free_symbols - values.keys()
            if len(unknown) != 1:
                continue
            symbol = next(iter(unknown))
            poly = sympy.Poly(expr.subs(values), symbol) if expr.subs(values).is_polynomial(symbol) else None
            if poly is None or poly.degree() != 1:
                continue
            slope, offset = poly.all_coeffs()
            root = (size - offset) / slope
            if not root.is_integer:
                raise ConfigError(no_root(name, i, expr, size))
            values[symbol] = int(root)
            solved = True


def check_range(path, flag: str, sizes: list[int], name: str, dim: int, bounds) -> None:
    """Each of `sizes` for dim `dim` of input `name` within the program's (min, max) for it."""
    if bounds is None:
        return
    low, high = bounds
    for size in sizes:
        if low == high and size != low:
            raise ConfigError(f"{flag if flag != '--batch' else f'--batch {size}'} cannot be fed to {path}: it was "
                              f"exported with a fixed {'batch' if dim == 0 else f'dim {dim}'} of {low} (input {name!r}); "
                              f"give {low}, or export it again with a dynamic {'batch' if dim == 0 else 'dim'}")
        if size < low or (high is not None and size > high):
            raise ConfigError(f"{flag if flag != '--batch' else f'--batch {size}'} is outside what {path} was exported "
                              f"for: its input {name!r} takes dim {dim} from {low} to {high if high is not None else 'any'}")
