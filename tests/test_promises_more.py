"""More of issue 25's promise areas, at the level of behaviour:

- safe YAML: each bound (bytes, counted in UTF-8; nesting depth; aliases; expanded nodes) takes a
  document exactly at the limit and refuses one a step over it;
- recommend's tie rule: over random latencies and accuracy drops, the choice is within the tie
  tolerance of the fastest candidate, and no tied candidate has a smaller drop or, with an equal
  drop, a higher precision; a tie at exactly the tolerance is a tie.
"""

from __future__ import annotations

import random

import pytest

from distill_export import safe_yaml
from distill_export.recommend import PRECISION_ORDER, TIE_TOLERANCE, recommend

# ----- safe YAML bounds ----------------------------------------------------------------------


def test_byte_limit_is_in_utf8_bytes_and_exact():
    limit = safe_yaml.MAX_BYTES
    at = "# " + "x" * (limit - 3) + "\n"
    assert len(at.encode()) == limit and safe_yaml.load(at) is None
    with pytest.raises(safe_yaml.YamlLimitError, match=f"{limit + 1} bytes"):
        safe_yaml.load(at + "\n")
    wide = "# " + "é" * (limit // 2)  # fewer characters than the limit, more bytes
    assert len(wide) < limit < len(wide.encode())
    with pytest.raises(safe_yaml.YamlLimitError, match="bytes"):
        safe_yaml.load(wide)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_depth_alias_and_expansion_limits_are_exact():
    depth = safe_yaml.MAX_DEPTH
    assert safe_yaml.load(_nested(depth)) is not None
    with pytest.raises(safe_yaml.YamlLimitError, match="deeper"):
        safe_yaml.load(_nested(depth + 1))
    aliases = safe_yaml.MAX_ALIASES
    doc = "a: &x 1\nb: [" + ", ".join(["*x"] * aliases) + "]\n"
    assert safe_yaml.load(doc)["b"] == [1] * aliases
    with pytest.raises(safe_yaml.YamlLimitError, match="aliases"):
        safe_yaml.load(doc.replace("*x]", "*x, *x]"))
    nodes = safe_yaml.MAX_EXPANDED_NODES  # a list of n scalars is n + 1 nodes
    assert len(safe_yaml.load("[" + ",".join(["1"] * (nodes - 1)) + "]")) == nodes - 1
    with pytest.raises(safe_yaml.YamlLimitError, match="expand"):
        safe_yaml.load("[" + ",".join(["1"] * nodes) + "]")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" \
           "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    with pytest.raises(safe_yaml.YamlLimitError, match="expand"):
        safe_yaml.load(bomb)  # 111 aliases, 100,000+ values once expanded
    with pytest.raises(safe_yaml.YamlLimitError, match="recursive"):
        safe_yaml.load("a: &a [*a]\n")
    assert safe_yaml.load("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}


# ----- recommend's tie rule ------------------------------------------------------------------

ORT = "onnxruntime-cpu"
FORMATS = {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8"}


def _report(p50: dict[str, float], drops: dict[str, float]) -> dict:
    exports = {f: {"path": f, "precision": prec, "runtime": "onnxruntime",
                   "parity": {"accuracy": 0.9 - drops[f], "accuracy_drop": drops[f], "passed": True,
                              "gates": {}}} for f, prec in FORMATS.items()}
    latency = [{"model": "student", "format": f, "backend": ORT, "device": "cpu", "batch": 1, "threads": 1,
                "p50_ms": p50[f]} for f in FORMATS]
    return {"exports": exports, "latency": latency}


@pytest.mark.parametrize("seed", range(4))
def test_choice_is_the_most_accurate_then_most_precise_of_the_tied(seed):
    rng = random.Random(seed)
    for _ in range(150):
        p50 = {"onnx": 1.0, **{f: rng.choice([1.0, 0.99, 0.97, 0.955, 0.95, 0.9, 0.8])
                                for f in ("onnx-fp16", "onnx-int8")}}
        drops = {f: rng.choice([0.0, 0.0, 0.002, 0.004, -0.001]) for f in FORMATS}
        rec = recommend(_report(p50, drops))["cpu-1t"]
        chosen = rec["format"]
        fastest = min(p50.values())
        tied = [f for f in FORMATS if p50[f] <= fastest * (1 + TIE_TOLERANCE)]
        assert chosen in tied, (p50, drops, chosen)

        def drop(f):
            return max(drops[f], 0.0)  # a negative drop (the export better) counts as none

        for other in tied:
            assert drop(chosen) <= drop(other), (p50, drops, chosen, other)
            if drop(other) == drop(chosen):
                assert PRECISION_ORDER.index(FORMATS[chosen]) <= PRECISION_ORDER.index(FORMATS[other])
        assert set(rec["excluded"]) == {f"{f} on {ORT}" for f in FORMATS if f != chosen}
        for f in FORMATS:
            if f != chosen:
                tie_words = "tied within 5%" in rec["excluded"][f"{f} on {ORT}"]
                assert tie_words == (f in tied), (f, rec["excluded"])


def test_a_tie_at_exactly_the_tolerance_is_a_tie():
    drops = {"onnx": 0.0, "onnx-fp16": 0.003, "onnx-int8": 0.004}
    at = recommend(_report({"onnx": 1.05, "onnx-fp16": 1.05, "onnx-int8": 1.0}, drops))["cpu-1t"]
    assert at["format"] == "onnx"  # 5% slower, no accuracy lost: FP32 wins the tie
    over = recommend(_report({"onnx": 1.0501, "onnx-fp16": 1.0501, "onnx-int8": 1.0}, drops))["cpu-1t"]
    assert over["format"] == "onnx-int8"
    assert over["speedup_vs_fp32_onnx"] == pytest.approx(1.0501)
