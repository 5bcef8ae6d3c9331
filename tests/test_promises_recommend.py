"""Behaviour-level tests of recommend.py's promises (issue 25, the survivors of mutmut on it):

- a row on OpenVINO is judged by the artifact's OpenVINO gates, and an artifact without them is
  "not validated on OpenVINO"; a failed artifact names its failed gates;
- the bar is the fastest FP32 ONNX of the target, whatever backend it runs on, and the speedup is
  against the FP32 ONNX on the chosen backend when there is one; a target without FP32 ONNX rows
  still gets a recommendation, with no speedup claimed;
- the teacher reference is the teacher's FP32 form on the chosen backend, and a teacher that was
  not measured there is said so;
- every target with student rows gets a recommendation that names its target and device, and
  the summary line says why when nothing qualifies.
"""

from __future__ import annotations

import pytest

from distill_export.recommend import recommend
from distill_export.report import recommendation_lines

ORT, OV = "onnxruntime-cpu", "openvino-cpu"


def _gates(**passed: bool) -> dict:
    return {name: {"value": 1.0 if ok else 0.5, "limit": 0.98, "kind": "min", "passed": ok}
            for name, ok in passed.items()}


def _parity(passed: bool = True, drop: float = 0.0, openvino: dict | None = None, **gates: bool) -> dict:
    out = {"accuracy": 0.9 - drop, "accuracy_drop": drop, "passed": passed,
           "gates": _gates(**(gates or {"top1_agreement": passed}))}
    if openvino is not None:
        out["runtimes"] = {"openvino": openvino}
    return out


def _export(fmt: str, precision: str | None, parity: dict | None) -> dict:
    out = {"path": f"student-{fmt}.onnx", "precision": precision, "runtime": "onnxruntime"}
    if parity is not None:
        out["parity"] = parity
    return out


def _row(model, fmt, backend, p50, threads=1, **extra):
    return {"model": model, "format": fmt, "backend": backend, "batch": 1, "threads": threads,
            "p50_ms": p50, **extra}


def test_openvino_rows_are_judged_by_the_openvino_gates():
    ov_pass = _parity(passed=True, top1_agreement=True)
    ov_fail = _parity(passed=False, top1_agreement=True, logit_cosine=False)
    exports = {
        "onnx": _export("onnx", "fp32", _parity(openvino=ov_pass)),
        "onnx-fp16": _export("onnx-fp16", "fp16", _parity(openvino=ov_fail)),  # passes on ORT only
        "onnx-int8": _export("onnx-int8", "int8", _parity()),  # never validated on OpenVINO
        "onnx-q": _export("onnx-q", "int8", None),  # never validated at all
    }
    latency = [_row("student", "onnx", ORT, 1.0), _row("student", "onnx", OV, 0.9)]
    latency += [_row("student", f, b, 0.5) for f in ("onnx-fp16", "onnx-int8", "onnx-q") for b in (ORT, OV)]
    rec = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    excluded = rec["excluded"]
    assert excluded["onnx-fp16 on openvino-cpu"] == "failed parity gate(s): logit_cosine"
    assert excluded["onnx-int8 on openvino-cpu"] == "not validated (run `distill-export validate`) on OpenVINO"
    assert excluded["onnx-q on openvino-cpu"] == excluded["onnx-q on onnxruntime-cpu"] == \
        "not validated (run `distill-export validate`)"
    # on ONNX Runtime the same artifacts passed: they compete there, and a tie goes to fp16
    assert (rec["format"], rec["backend"]) == ("onnx-fp16", ORT)
    assert excluded["onnx-int8 on onnxruntime-cpu"].startswith("tied within 5%")
    assert excluded["onnx on openvino-cpu"].startswith("slower")  # passed on OpenVINO, only slower
    # the OpenVINO gates alone decide: an OpenVINO section without gates is "not validated"
    exports["onnx-fp16"]["parity"]["runtimes"]["openvino"] = {"passed": True}
    rec = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    assert rec["excluded"]["onnx-fp16 on openvino-cpu"].endswith("on OpenVINO")
    # once the OpenVINO gates pass, the OpenVINO row wins
    exports["onnx-fp16"]["parity"]["runtimes"]["openvino"] = ov_pass
    latency.append(_row("student", "onnx-fp16", OV, 0.3))
    latency = [r for r in latency if not (r["format"] == "onnx-fp16" and r["backend"] == OV and r["p50_ms"] == 0.5)]
    rec = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    assert (rec["format"], rec["backend"]) == ("onnx-fp16", OV)
    assert rec["speedup_vs_fp32_onnx"] == pytest.approx(0.9 / 0.3)  # vs the FP32 ONNX on OpenVINO
    assert rec["fp32_onnx_reference"] == "student (onnx, openvino-cpu)"


def test_a_failed_artifact_names_every_failed_gate():
    exports = {"onnx": _export("onnx", "fp32", _parity()),
               "onnx-int8": _export("onnx-int8", "int8",
                                    _parity(passed=False, top1_agreement=False, logit_cosine=True, max_abs=False)),
               "onnx-fp16": _export("onnx-fp16", "fp16", _parity(passed=False, top1_agreement=True))}
    latency = [_row("student", f, ORT, p) for f, p in (("onnx", 1.0), ("onnx-int8", 0.4), ("onnx-fp16", 0.6))]
    excluded = recommend({"exports": exports, "latency": latency})["cpu-1t"]["excluded"]
    assert excluded["onnx-int8 on onnxruntime-cpu"] == "failed parity gate(s): top1_agreement, max_abs"
    assert excluded["onnx-fp16 on onnxruntime-cpu"] == "failed parity gate(s): ?"  # failed, no gate named


def test_the_bar_is_the_fastest_fp32_onnx_and_the_speedup_is_on_the_chosen_backend():
    exports = {"onnx": _export("onnx", "fp32", _parity(openvino=_parity())),
               "onnx-int8": _export("onnx-int8", "int8", _parity(drop=0.002))}
    latency = [_row("student", "onnx", ORT, 1.2), _row("student", "onnx", OV, 0.8),
               _row("student", "onnx-int8", ORT, 0.7), _row("student", "onnx-int8", ORT, 0.9, threads=4),
               _row("student", "onnx", ORT, 1.0, threads=4)]
    rec = recommend({"exports": exports, "latency": latency})
    one = rec["cpu-1t"]
    # int8 on ORT (0.7 ms) beats the fastest FP32 ONNX (0.8 ms on OpenVINO), not only ORT's 1.2 ms
    assert (one["format"], one["backend"]) == ("onnx-int8", ORT)
    assert one["speedup_vs_fp32_onnx"] == pytest.approx(1.2 / 0.7)  # against the FP32 ONNX on ORT
    assert one["fp32_onnx_reference"] == "student (onnx, onnxruntime-cpu)"
    four = rec["cpu-4t"]
    assert four["format"] == "onnx-int8" and four["speedup_vs_fp32_onnx"] == pytest.approx(1.0 / 0.9)
    # int8 slower than the fastest FP32 ONNX anywhere on the target: out
    latency[2] = _row("student", "onnx-int8", ORT, 0.85)
    one = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    assert (one["format"], one["backend"]) == ("onnx", OV)
    assert one["excluded"]["onnx-int8 on onnxruntime-cpu"].startswith("slower than the FP32 ONNX here (0.85 ms vs 0.8 ms on openvino-cpu)")


def test_fp32_reference_falls_back_to_the_fastest_on_another_backend():
    exports = {"onnx": _export("onnx", "fp32", _parity()),
               "onnx-int8": _export("onnx-int8", "int8", _parity(openvino=_parity()))}
    latency = [_row("student", "onnx", ORT, 1.0), _row("student", "onnx-int8", OV, 0.5)]
    rec = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    assert (rec["format"], rec["backend"]) == ("onnx-int8", OV)
    assert rec["speedup_vs_fp32_onnx"] == pytest.approx(2.0)
    assert rec["fp32_onnx_reference"] == "student (onnx, onnxruntime-cpu)"


def test_a_target_without_fp32_onnx_rows_still_gets_a_recommendation_without_a_speedup():
    exports = {"onnx": _export("onnx", "fp32", _parity()), "onnx-int8": _export("onnx-int8", "int8", _parity()),
               "onnx-x": _export("onnx-x", "bf16", _parity())}  # a precision outside fp32/fp16/int8
    latency = [_row("student", "onnx-int8", ORT, 0.5), _row("student", "onnx-x", ORT, 0.5)]
    rec = recommend({"exports": exports, "latency": latency})["cpu-1t"]
    assert rec["format"] == "onnx-int8"  # tied: a known precision ranks before an unknown one
    assert rec["speedup_vs_fp32_onnx"] is None and rec["fp32_onnx_reference"] is None
    line = recommendation_lines({"recommended": {"cpu-1t": rec}})[0]
    assert "vs student FP32 ONNX" not in line


def test_the_teacher_reference_is_its_fp32_form_on_the_chosen_backend():
    exports = {"onnx": _export("onnx", "fp32", _parity())}
    for order in (1, -1):
        teachers = [_row("teacher", "onnx-int8", ORT, 2.0), _row("teacher", "onnx", ORT, 4.0),
                    _row("teacher", "pytorch", "pytorch-cpu", 9.0)][::order]
        rec = recommend({"exports": exports, "latency": teachers + [_row("student", "onnx", ORT, 1.0)]})["cpu-1t"]
        assert rec["teacher_reference"] == "teacher (onnx, onnxruntime-cpu)"
        assert rec["speedup_vs_teacher"] == pytest.approx(4.0) and "teacher_missing" not in rec
    rec = recommend({"exports": exports, "latency": [_row("teacher", "pytorch", "pytorch-cpu", 9.0),
                                                     _row("student", "onnx", ORT, 1.0)]})["cpu-1t"]
    assert rec["speedup_vs_teacher"] is None
    assert rec["teacher_missing"] == "the teacher was not measured on onnxruntime-cpu"
    line = recommendation_lines({"recommended": {"cpu-1t": rec}})[0]
    assert line.endswith("no teacher on onnxruntime-cpu (the teacher was not measured on onnxruntime-cpu)")


def test_every_target_with_student_rows_is_named_with_its_device():
    exports = {"onnx": _export("onnx", "fp32", _parity())}
    latency = [_row("teacher", "onnx", ORT, 3.0),  # cpu-1t: only the teacher, no recommendation
               {"model": "student", "format": "onnx", "backend": ORT, "batch": 1, "threads": 4, "p50_ms": 1.0,
                "cpu_p50_ms": 0.8},  # no "device": a CPU row
               _row("student", "onnx", "onnxruntime-cuda", 0.2, threads=2, device="cuda")]
    rec = recommend({"exports": exports, "latency": latency})
    assert set(rec) == {"cpu-4t", "gpu"}
    for target, r in rec.items():
        assert r["target"] == target
    assert rec["cpu-4t"]["device"] == "cpu" and rec["gpu"]["device"] == "cuda"
    assert rec["cpu-4t"]["cpu_p50_ms"] == 0.8 and "cpu_p50_ms" not in rec["gpu"]


def test_when_nothing_qualifies_the_summary_says_why():
    exports = {"onnx": _export("onnx", "fp32", _parity(passed=False))}
    rec = recommend({"exports": exports, "latency": [_row("student", "onnx", ORT, 1.0)]})
    assert rec["cpu-1t"]["format"] is None and rec["cpu-1t"]["target"] == "cpu-1t"
    line = recommendation_lines({"recommended": rec})[0]
    assert line == ("recommended for cpu-1t: none (no export passed every parity gate and was as fast as "
                    "the FP32 ONNX, which itself failed its parity gates)")  # said since the 52nd audit (A1)
