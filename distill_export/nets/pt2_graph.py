"""Refuse a torch.export program whose graph does more than compute on tensors.

``pt2_safety.check_pt2_archive`` keeps the loader from unpickling code; this module checks
what the loaded graph would *run*. An archive with only plain tensors can still name any
registered operator: ``aten.from_file(name, shared=True)`` maps a file into a tensor, and an
in-place fill then overwrites the file. So every node of the graph (and of the subgraphs that
cond / while_loop / map carry) is checked against an allow-list before the program runs:

* ATen operators whose arguments are tensors, numbers, dtypes, devices and lists of them.
  An operator can only reach a file, a process or the network through a name, so an ATen
  operator taking a string is allowed only if the string is a mode (``gelu(approximate=)``,
  ``einsum(equation)``, ...): ``from_file``, ``save``, ``_print``, ``warn`` are refused;
  any Storage, Stream, Future, object or dict argument is refused;
* torchvision's box operators (nms, roi_align, ...), plain compute;
* the symbolic-shape arithmetic torch.export records (``operator.mul`` on sizes,
  ``torch.sym_max``), ``operator.getitem``, and the control-flow operators cond, while_loop,
  map and scan, whose subgraphs are checked the same way.

Everything else is refused: other namespaces (``profiler``, ``_c10d_functional``, custom ops),
other higher-order operators (``with_effects``, ``print``, delegates), Python callables.
No node may write in place into the program's inputs, parameters or constants, directly or
through a view; writes into buffers are allowed, since a program exported in train mode
updates its BatchNorm statistics that way (in memory, never a file).
"""

from __future__ import annotations

import operator

import torch

from distill_export.errors import CheckpointError

# ATen operators whose string argument is a mode or an equation, never a name of anything.
STRING_MODE_OPS = frozenset({
    "_assert_async", "_assert_scalar", "_functional_assert_async", "_functional_assert_scalar",
    "_convolution_mode", "conv1d", "conv2d", "conv3d", "div", "divide", "einsum", "gelu", "gelu_backward",
    "pad", "pad_sequence", "meshgrid", "quantile", "nanquantile", "scatter", "scatter_reduce", "index_reduce",
    "searchsorted", "segment_reduce", "stft", "_linalg_check_errors", "_linalg_eigh", "_linalg_svd",
    "linalg_cond", "linalg_eigh", "linalg_eigvalsh", "linalg_lstsq", "linalg_matrix_norm", "linalg_norm",
    "linalg_qr", "linalg_svd", "linalg_svdvals", "_mixed_dtypes_linear", "_sparse_semi_structured_linear",
    "fft_fft", "fft_fft2", "fft_fftn", "fft_hfft", "fft_hfft2", "fft_hfftn", "fft_ifft", "fft_ifft2",
    "fft_ifftn", "fft_ihfft", "fft_ihfft2", "fft_ihfftn", "fft_irfft", "fft_irfft2", "fft_irfftn",
    "fft_rfft", "fft_rfft2", "fft_rfftn",
})
# Operators outside aten that detectors use; plain compute on tensors.
EXTRA_OPS = frozenset({("torchvision", n) for n in ("nms", "roi_align", "roi_pool", "ps_roi_align",
                                                    "ps_roi_pool", "deform_conv2d")})
# Argument types an allowed operator may take (JIT type kinds; dtype, layout and memory
# format are ints in schemas). Optional and List are unwrapped.
_VALUE_KINDS = frozenset({"TensorType", "IntType", "FloatType", "BoolType", "NumberType", "ComplexType",
                          "SymIntType", "SymBoolType", "SymFloatType", "DeviceObjType", "GeneratorType",
                          "NoneType", "ScalarTypeType", "LayoutType", "MemoryFormatType"})
_CONTROL_FLOW = frozenset({"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled",
                           "wrap_with_autocast"})
# Arguments some composite ops write without an alias annotation in their schema.
_UNDECLARED_WRITES = frozenset({"running_mean", "running_var", "dst"})
# Ops whose result shares its input's memory though their schema declares no alias (found by a
# hostile audit: `_unsafe_view(image)` then `fill_` wrote into the data): their results are
# treated as views, so a later in-place write through them is refused like one through `view`.
_UNDECLARED_VIEWS = frozenset({"_unsafe_view", "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk",
                               "_reshape_alias", "alias", "_alias", "lift_fresh", "detach_"})


def _python_ops() -> frozenset:
    from torch._export.serde.serialize import _SYM_OPS  # what the loader lets a graph name

    return frozenset(_SYM_OPS) | {operator.getitem}


def _refuse(path, node, target: str, why: str) -> CheckpointError:
    where = node.meta.get("subgraph")  # set by check_program_graph for a subgraph's nodes
    where = f" in subgraph {where!r}" if where else ""
    return CheckpointError(f"{path}: refused to run this .pt2: node {node.name!r}{where} calls {target}, {why}; "
                           "a teacher program may only compute on tensors")


def _op_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::', 1)[-1]}.{target._overloadname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    return getattr(target, "__qualname__", None) or repr(target)[:80]


def _bad_type(t, allow_string: bool) -> str | None:
    """The first argument type not on the allow-list, or None."""
    kind = t.kind()
    if kind in ("OptionalType", "ListType"):
        return _bad_type(t.getElementType(), allow_string)
    if kind in _VALUE_KINDS or (kind == "StringType" and allow_string):
        return None
    return str(t)


def _check_op(target, node, path) -> None:
    name = _op_name(target)
    schema = target._schema
    base = schema.name.split("::", 1)[-1]
    if target.namespace != "aten" and (target.namespace, base) not in EXTRA_OPS:
        raise _refuse(path, node, name, f"an operator of namespace {target.namespace!r}, which is not on the "
                                        "allow-list (aten tensor operators)")
    for arg in schema.arguments:
        bad = _bad_type(arg.type, base in STRING_MODE_OPS)
        if bad == "str":
            raise _refuse(path, node, name, f"which takes a string ({arg.name!r}: a file name or text), "
                                            "so it can reach files or output")
        if bad is not None:
            raise _refuse(path, node, name, f"which takes a {bad} ({arg.name!r}), not a tensor or a number")


def _values(x):
    """The graph nodes inside an argument (a node, or a list/tuple of them)."""
    if isinstance(x, torch.fx.Node):
        yield x
    elif isinstance(x, (list, tuple)):
        for item in x:
            yield from _values(item)


def _bound(node) -> list[tuple[object, object]]:
    """(schema argument, value) for each argument the node passes."""
    schema = node.target._schema
    out = []
    for i, arg in enumerate(schema.arguments):
        if arg.kwarg_only or i >= len(node.args):
            if arg.name in node.kwargs:
                out.append((arg, node.kwargs[arg.name]))
        else:
            out.append((arg, node.args[i]))
    return out


def _check_graph(gm: torch.fx.GraphModule, path, protected: dict[str, str], python_ops: frozenset) -> None:
    """protected: placeholder name -> what it is (e.g. "the input 'image'") for values no node
    may write into; roots tracks which of them each value may be a view of."""
    roots: dict[torch.fx.Node, set[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            roots[node] = {node.name} if node.name in protected else set()
        elif node.op in ("output", "get_attr"):
            continue  # get_attr: a subgraph (checked on its own) or a tensor
        elif node.op != "call_function":
            raise _refuse(path, node, str(node.target)[:80], f"a {node.op} node, which an exported program "
                                                             "does not contain")
        elif node.target in python_ops:
            # getitem of a list of views (split, unbind) is a view too
            roots[node] = set().union(*(roots.get(v, set()) for v in _values(node.args)))
        elif isinstance(node.target, torch._ops.HigherOrderOperator):
            if node.target.name() not in _CONTROL_FLOW:
                raise _refuse(path, node, _op_name(node.target), "a higher-order operator that is not "
                                                                 "control flow (cond, while_loop, map, scan)")
            roots[node] = set()  # control flow returns new tensors, never views of its operands
        elif isinstance(node.target, torch._ops.OpOverload):
            _check_op(node.target, node, path)
            aliased: set[str] = set()
            for arg, value in _bound(node):
                hit = set().union(*(roots.get(v, set()) for v in _values(value)))
                writes = arg.alias_info is not None and arg.alias_info.is_write
                if hit and (writes or arg.name in _UNDECLARED_WRITES):
                    raise _refuse(path, node, _op_name(node.target),
                                  f"which writes in place into {protected[min(hit)]}")
                if arg.alias_info is not None or node.target._schema.name.split("::")[-1] in _UNDECLARED_VIEWS:
                    aliased |= hit  # a view or an in-place result shares its argument's memory
            roots[node] = aliased
        else:
            raise _refuse(path, node, _op_name(node.target), "a Python callable, not a tensor operator")


def check_program_graph(ep, path) -> None:
    """Raise CheckpointError unless every node of the loaded ExportedProgram `ep` (and of its
    subgraphs) is an allowed operator that writes into none of the program's inputs."""
    from torch.export.graph_signature import InputKind

    python_ops = _python_ops()
    protected = {}
    for spec in ep.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name is not None and spec.kind != InputKind.BUFFER:
            what = {InputKind.USER_INPUT: "the input", InputKind.PARAMETER: "the parameter"}.get(spec.kind,
                                                                                                 "the constant")
            protected[name] = f"{what} {spec.target or name!r}"
    _check_graph(ep.graph_module, path, protected, python_ops)
    for sub_name, sub in ep.graph_module.named_modules():
        if sub is not ep.graph_module and isinstance(sub, torch.fx.GraphModule):
            # a subgraph's operands are the caller's values: write into none of them
            inputs = {n.name: f"the operand {n.name!r} of subgraph {sub_name!r}"
                      for n in sub.graph.nodes if n.op == "placeholder"}
            for n in sub.graph.nodes:
                n.meta.setdefault("subgraph", sub_name)  # for messages
            _check_graph(sub, path, inputs, python_ops)
