"""Behaviour-level tests of validate.py's promises (issue 25, the survivors of mutmut on it with
its fast tests; the end-to-end CLI checks live in tests/test_validate.py):

- a gate's limit is validate.<name> when the config has that field, else validate.gates[name],
  else the task's default;
- the failed-gate phrases and the gate table say what each gate's result says, for every kind
  (min and max), passed or failed, on ONNX Runtime and on OpenVINO;
- an export that returns other outputs, or another shape, than the PyTorch reference is refused
  with one sentence that names the file, the outputs and the shapes;
- the result carries every batch size's metrics and the teacher-accuracy retention.
"""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import numpy as np
import pytest

from distill_export import validate
from distill_export.config import ValidateConfig
from distill_export.errors import ConfigError, DataError
from distill_export.tasks import get_task
from distill_export.tasks.base import Gate


def test_gate_limits_come_from_the_field_then_validate_gates_then_the_default():
    for task_name in ("classification", "detection"):
        task = get_task(task_name)
        for gate in task.gates:
            cfg = ValidateConfig(**{gate.config_key: 0.123})
            assert (gate.metric, gate.kind, 0.123) in validate.gates_for(gate.precision, cfg, task)
    extra = Gate("fp32_custom_agreement", "fp32", "top1_agreement", "min", 0.5)  # a plugin task's gate
    assert validate.gate_limit(extra, ValidateConfig()) == 0.5
    assert validate.gate_limit(extra, SimpleNamespace(gates={"fp32_custom_agreement": 0.7})) == 0.7
    assert validate.gate_limit(extra, SimpleNamespace(gates={"other": 0.7})) == 0.5
    assert validate.gate_limit(extra, SimpleNamespace(gates=None)) == 0.5
    both = SimpleNamespace(fp32_custom_agreement=0.9, gates={"fp32_custom_agreement": 0.7})
    assert validate.gate_limit(extra, both) == 0.9  # the field wins
    with pytest.raises(ConfigError, match="no parity gates for precision 'bf16'"):
        validate.gates_for("bf16", ValidateConfig(), get_task("classification"))


def _random_results(rng: random.Random) -> dict:
    results = {}
    for fmt in ("onnx", "onnx-fp16", "onnx-int8"):
        gates = {}
        for name in ("top1_agreement", "max_abs", "accuracy_drop"):
            kind = rng.choice(["min", "max"])
            limit = rng.choice([0.01, 0.5, 0.98])
            value = rng.choice([limit * 0.9, limit, limit * 1.1])
            gates[name] = validate.Gate(name, value, limit, kind).to_dict()
        res = {"gates": gates, "passed": all(g["passed"] for g in gates.values())}
        if rng.random() < 0.5:
            res["runtimes"] = {"openvino": {"gates": dict(gates)}, "other": {"skipped": "not installed"}}
        results[fmt] = res
    return results


@pytest.mark.parametrize("seed", range(5))
def test_failed_gate_phrases_and_the_table_agree_with_every_gate(seed):
    rng = random.Random(seed)
    for _ in range(20):
        results = _random_results(rng)
        phrases = validate.failed_gates(results)
        want = []
        for fmt, res in results.items():
            for name, g in res["gates"].items():
                assert set(g) == {"value", "limit", "kind", "passed"}
                ok = g["value"] >= g["limit"] if g["kind"] == "min" else g["value"] <= g["limit"]
                assert g["passed"] == ok
                if not ok:
                    want.append(f"{fmt} {name} {g['value']:.4g} {'<' if g['kind'] == 'min' else '>'} {g['limit']:.4g}")
        assert phrases == want
        for phrase in phrases:  # each phrase is a true inequality
            value, op, limit = re.fullmatch(r"\S+ \S+ (\S+) ([<>]) (\S+)", phrase).groups()
            assert (float(value) < float(limit)) if op == "<" else (float(value) > float(limit))
        rows = validate.gate_rows(results)
        on = {f"{fmt} on openvino": res["runtimes"]["openvino"] for fmt, res in results.items() if "runtimes" in res}
        assert set(validate.runtime_results(results)) == set(on)
        expected_rows = []
        for fmt, res in {**results, **on}.items():
            for name, g in res["gates"].items():
                op = ">=" if g["kind"] == "min" else "<="
                expected_rows.append([fmt, name, f"{g['value']:.6g}", f"{op} {g['limit']:.6g}",
                                      "PASS" if g["passed"] else "FAIL"])
        assert rows == expected_rows


def test_the_printed_gate_table_has_every_row():
    from rich.console import Console

    results = _random_results(random.Random(7))
    console = Console(record=True, width=200)
    validate.print_gates(results, console)
    text = console.export_text()
    assert text.splitlines()[0].strip() == "Parity gates (worst case over batch sizes)"
    assert re.search(r"format\s*┃\s*gate\s*┃\s*value\s*┃\s*limit\s*┃\s*result", text)  # the header row
    for fmt, name, value, limit, verdict in validate.gate_rows(results):
        assert re.search(rf"{re.escape(fmt)}\s*│\s*{name}\s*│\s*{re.escape(value)}\s*│\s*{re.escape(limit)}\s*│\s*{verdict}",
                         text), (fmt, name)


def test_an_export_with_other_outputs_or_shapes_is_one_sentence_naming_them():
    ref = {"boxes": np.zeros((2, 4, 4)), "scores": np.zeros((2, 4))}
    with pytest.raises(DataError) as err:
        validate.check_output_shapes("m.onnx", {"boxes": ref["boxes"], "logits": np.zeros((2, 3))}, ref)
    assert str(err.value) == "m.onnx returned outputs boxes, logits, expected boxes, scores"
    with pytest.raises(DataError) as err:
        validate.check_output_shapes("m.onnx", {"boxes": ref["boxes"], "scores": np.zeros((2, 5))}, ref)
    assert str(err.value) == "m.onnx returned scores of shape (2, 5), expected (2, 4)"
    with pytest.raises(DataError) as err:
        validate.check_output_shapes("s.onnx", np.zeros((3, 5)), np.zeros((3, 4)))
    assert str(err.value) == "s.onnx returned logits of shape (3, 5), expected (3, 4)"


def test_gate_flags_refuse_with_a_sentence_that_helps():
    task = get_task("classification")
    names = [g.config_key for g in task.gates]
    assert validate.parse_gate_flags(["fp32_max_abs=1e-5", " int8_agreement=0.9"], task) == {
        "validate.fp32_max_abs": 1e-5, "validate.int8_agreement": 0.9}
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags(["fp32_max_ab=1"], task)
    assert str(err.value) == "--gate expects NAME=VALUE, got 'fp32_max_ab=1' (did you mean fp32_max_abs?)"
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags(["zzz=1"], task)  # nothing close: the list of gates
    assert str(err.value) == f"--gate expects NAME=VALUE, got 'zzz=1' (gates: {', '.join(names)})"
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags(["fp32_max_abs=1e-5=3"], task)  # the name ends at the first '='
    assert str(err.value) == "--gate fp32_max_abs: expected a plain number (ASCII digits, no '_'), got '1e-5=3'"
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags(["fp32_max_abs=abc"], task)
    assert str(err.value) == "--gate fp32_max_abs: expected a plain number (ASCII digits, no '_'), got 'abc'"
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags(["int8_agreement=1.5"], task)  # outside the config's own range
    assert str(err.value).startswith("--gate int8_agreement: ") and "1.5" in str(err.value)


def test_validate_artifact_runs_the_artifact_on_the_parity_data_and_judges_it_by_the_config(monkeypatch):
    """A stand-in runtime: the artifact is opened for the run's checkpoint and sample shape with
    all threads, run on the parity inputs at every batch size; the gates use the config's limits;
    retention is the worst accuracy over the teacher's; wrong outputs name the artifact."""
    task = get_task("classification")
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 4)).astype(np.float32)
    labels = reference.argmax(1)
    labels[:8] = (labels[:8] + 1) % 4  # the reference is 80% accurate
    x = rng.normal(size=(40, 2, 3)).astype(np.float32)
    art = {"path": "student-int8.onnx", "runtime": "onnxruntime", "precision": "int8", "format": "onnx-int8"}
    opened, seen = [], []

    def make_runner(artifact, threads=0, sample_shape=None, checkpoint_sha256=""):
        opened.append((artifact, threads, sample_shape, checkpoint_sha256))

        def run(inputs, bs):
            seen.append((inputs is x, bs))
            return reference if bs != 7 else reference[:, :3]
        return run

    monkeypatch.setattr(validate, "make_runner", make_runner)
    parity = {"x": x, "labels": labels, "reference": reference, "checkpoint_sha256": "ab" * 32}
    cfg = ValidateConfig(batch_sizes=[1, 5], int8_agreement=0.75)
    res = validate.validate_artifact(art, parity, cfg, task, teacher_accuracy=0.9)
    assert opened == [(art, 0, (2, 3), "ab" * 32)]
    assert seen == [(True, 1), (True, 5)] and set(res["per_batch"]) == {"1", "5"}
    assert res["gates"]["top1_agreement"]["limit"] == 0.75 and res["passed"]
    assert res["teacher_accuracy_retention"] == pytest.approx(0.8 / 0.9)
    res = validate.validate_artifact(art, {k: v for k, v in parity.items() if k != "checkpoint_sha256"}, cfg, task, None)
    assert opened[-1][3] == "" and "teacher_accuracy_retention" not in res
    with pytest.raises(DataError, match=r"^student-int8\.onnx returned logits of shape \(40, 3\), expected \(40, 4\)$"):
        validate.validate_artifact(art, parity, ValidateConfig(batch_sizes=[1, 7]), task, None)


def test_the_printed_table_shows_a_passed_gate_green_and_a_failed_one_bold_red():
    from rich.console import Console

    results = _random_results(random.Random(3))
    console = Console(record=True, width=200, color_system="standard", force_terminal=True)
    validate.print_gates(results, console)
    cells = re.findall(r"\x1b\[([0-9;]+)m(PASS|FAIL)\x1b\[0m", console.export_text(styles=True))
    assert [verdict for _, verdict in cells] == [row[-1] for row in validate.gate_rows(results)]
    assert {"PASS", "FAIL"} <= {verdict for _, verdict in cells}
    for style, verdict in cells:
        assert style == ("32" if verdict == "PASS" else "1;31"), (style, verdict)  # green; bold red
