"""ONNX input names that may equal a name inside the graph.

A model's inputs are named after the manifest's columns (modalities). The dynamo exporter names
the graph's own values after their FX nodes (`cat`, `linear`, `relu`, ...), so a column named
like one of them gave two values of one name, and the ONNX check then recursed for ever
(forty-first audit B1, B2); TorchScript renamed such an input `onnx::Conv_36.1` beside its own
initializer, and the fp16 converter and the INT8 quantiser add values named after the inputs
(forty-second audit B1-B3). Exporters and converters are given placeholder input names that no
node takes (PLACEHOLDER_PREFIX); the inputs are renamed to the modalities after, any inner value
of that name moved aside first.
"""

from __future__ import annotations

from pathlib import Path

PLACEHOLDER_PREFIX = "distill_export_input_"


def placeholders(count: int) -> list[str]:
    return [f"{PLACEHOLDER_PREFIX}{i}" for i in range(count)]


def _graphs(graph):
    """graph and every subgraph in its nodes' attributes (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _rename_everywhere(model, old: str, new: str) -> None:
    """Every use of the value name `old` in the main graph and its subgraphs becomes `new`."""
    for graph in _graphs(model.graph):
        for node in graph.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
        for items in (graph.input, graph.output, graph.value_info, graph.initializer):
            for item in items:
                if item.name == old:
                    item.name = new
        for sparse in graph.sparse_initializer:
            if sparse.values.name == old:
                sparse.values.name = new


def _names(model) -> set[str]:
    names: set[str] = set()
    for graph in _graphs(model.graph):
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
        for items in (graph.input, graph.output, graph.value_info, graph.initializer):
            names.update(item.name for item in items)
    return names


def rename_model_inputs(model, mapping: dict[str, str]) -> None:
    """Rename graph inputs of the onnx.ModelProto in place (old -> new); an inner value already
    named `new` is renamed first, to `new_1` (or the next free suffix)."""
    pending = list(mapping.items())
    while pending:
        old, wanted = pending.pop(0)
        names = _names(model)
        if wanted != old and wanted in names:  # another value has the name: give it another first
            spare = next(f"{wanted}_{i}" for i in range(1, len(names) + 2) if f"{wanted}_{i}" not in names)
            _rename_everywhere(model, wanted, spare)
            pending = [(spare if p == wanted else p, w) for p, w in pending]  # it was a later input
        _rename_everywhere(model, old, wanted)


def rename_inputs(path: Path, mapping: dict[str, str]) -> None:
    """rename_model_inputs on an ONNX file, in place."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    rename_model_inputs(model, mapping)
    onnx.save(model, str(path))


def input_names(model) -> list[str]:
    """The graph's real inputs (not initializers listed as inputs, as IR < 4 did)."""
    weights = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights]


def to_placeholders(model) -> dict[str, str]:
    """Give the model's inputs placeholder names, before a converter (onnxconverter_common's fp16,
    onnxruntime's quantiser) adds values named after them (`relu_scale`, `..._cast_to_...`):
    returns the mapping back, for rename_model_inputs after the conversion (42nd audit B1, B2)."""
    names = input_names(model)
    temporary = placeholders(len(names))
    rename_model_inputs(model, dict(zip(names, temporary)))
    return dict(zip(temporary, names))
