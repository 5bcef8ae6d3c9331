"""Which student artifact to ship, per profiled target: a pure function of report.json.

A target is where rows were measured: ``cpu-<n>t`` for each CPU thread count (``cpu-1t``,
``cpu-4t``, ``cpu-2t`` when "all threads" is two cores) and ``gpu`` for CUDA rows. On each,
at batch 1 (the latency a single request sees), the candidates are the exported student
artifacts (``exports``) measured there, on any backend. Rules, in order:

1. an artifact that was not validated, or failed any parity gate, is out (a row on OpenVINO
   needs the artifact's gates on OpenVINO, ``parity.runtimes.openvino``);
2. an artifact slower than the student's FP32 ONNX on that target (its fastest backend) is
   out: quantising must pay for the accuracy it risks;
3. the fastest remaining artifact wins, but artifacts within ``tie_tolerance`` (5%) of its
   p50 count as tied (run-to-run noise on a shared machine is about that size), and among
   tied ones the smaller score drop wins (accuracy, or |ΔmAP50| for detection), then the higher
   precision (fp32 > fp16 > int8),
   then the lower p50, then the name.

Each choice carries its accuracy drop (vs the PyTorch student, from ``parity``), its speedup
over the student's FP32 ONNX and over the teacher on the same runtime, and why the others
were excluded. ``report.json`` keeps the result under ``recommended.<target>``.
"""

from __future__ import annotations

TIE_TOLERANCE = 0.05
PRECISION_ORDER = ("fp32", "fp16", "int8")
REFERENCE_FORMATS = ("pytorch", "onnx")  # the teacher's FP32 form on a runtime, by preference


def target_name(row: dict) -> str:
    return "gpu" if row.get("device", "cpu") != "cpu" else f"cpu-{row['threads']}t"


# How much worse an export scores than the PyTorch student, by task: the first key its parity has
# (classification: accuracy; detection: |mAP50| change, for which "accuracy_drop" was never there
# and every tie went to precision while report.md said "the smaller accuracy drop wins": 66th A4).
SCORE_DROP_KEYS = ("accuracy_drop", "map50_delta")


def score_drop(parity: dict) -> float:
    drop = next((parity[k] for k in SCORE_DROP_KEYS if parity.get(k) is not None), 0.0)
    return max(float(drop), 0.0)


def tie_break(record) -> str:
    """The words for the rule score_drop applies to this record's task."""
    words = {"classification": "the smaller accuracy drop wins", "detection": "the smaller |ΔmAP50| wins"}
    return words.get(record.task.name, "the higher precision wins")


def _precision_rank(precision: str | None) -> int:
    return PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)


def _failed(parity: dict) -> list[str]:
    return [name for name, g in (parity.get("gates") or {}).items() if not g.get("passed")]


OPENVINO_LABEL = "openvino-cpu"  # runtimes/openvino_cpu.py: the ov-cpu backend's rows


def _parity(art: dict, row: dict) -> dict | None:
    """The gates that speak for this row: ONNX Runtime's, or OpenVINO's for an OpenVINO row."""
    parity = art.get("parity")
    if parity and row["backend"] == OPENVINO_LABEL:
        on_ov = (parity.get("runtimes") or {}).get("openvino") or {}
        return on_ov if "gates" in on_ov else None
    return parity


def _teacher_row(rows: list[dict], backend: str, threads) -> dict | None:
    found = [r for r in rows if r["model"] == "teacher" and r["backend"] == backend and r["threads"] == threads]
    found.sort(key=lambda r: REFERENCE_FORMATS.index(r["format"]) if r["format"] in REFERENCE_FORMATS else 99)
    return found[0] if found else None


def recommend(report: dict, batch: int = 1, tie_tolerance: float = TIE_TOLERANCE) -> dict[str, dict]:
    """{target: recommendation} for every target with student rows at `batch`."""
    exports = report.get("exports") or {}
    latency = report.get("latency") or []
    rows = [r for r in latency if "p50_ms" in r and r.get("batch") == batch]
    teacher_skips = {r["backend"]: r["skipped"] for r in latency if r.get("model") == "teacher" and "skipped" in r}
    targets: dict[str, list[dict]] = {}
    for r in rows:
        targets.setdefault(target_name(r), []).append(r)
    out = {}
    for target in sorted(targets):
        trows = targets[target]
        students = [r for r in trows if r["model"] == "student" and r["format"] in exports]
        if not students:
            continue
        out[target] = _choose(target, trows, students, exports, teacher_skips, batch, tie_tolerance)
    return out


def _choose(target, trows, students, exports, teacher_skips, batch, tie_tolerance) -> dict:
    fp32 = [r for r in students if r["format"] == "onnx"]
    bar = min(fp32, key=lambda r: r["p50_ms"]) if fp32 else None
    candidates, excluded = [], {}
    for r in students:
        key = f"{r['format']} on {r['backend']}"
        parity = _parity(exports[r["format"]], r)
        if not parity:
            excluded[key] = "not validated (run `distill-export validate`)" + (
                " on OpenVINO" if r["backend"] == OPENVINO_LABEL and exports[r["format"]].get("parity") else "")
        elif not parity.get("passed"):
            excluded[key] = "failed parity gate(s): " + ", ".join(_failed(parity) or ["?"])
        elif bar is not None and r["p50_ms"] > bar["p50_ms"]:
            excluded[key] = (f"slower than the FP32 ONNX here ({r['p50_ms']:.4g} ms vs {bar['p50_ms']:.4g} ms "
                             f"on {bar['backend']})")
        else:
            candidates.append(r)
    base = {"target": target, "batch": batch, "excluded": excluded}
    if not candidates:
        # the FP32 ONNX is the speed bar even when it failed its own gates: say so (52nd audit A1)
        failed_bar = bar is not None and excluded.get(f"onnx on {bar['backend']}", "").startswith("failed parity")
        return {**base, "format": None, "reason": "no export passed every parity gate and was as fast as the FP32 ONNX"
                + (", which itself failed its parity gates" if failed_bar else "")}
    fastest = min(r["p50_ms"] for r in candidates)
    tied = [r for r in candidates if r["p50_ms"] <= fastest * (1 + tie_tolerance)]

    def rank(r):
        parity = _parity(exports[r["format"]], r)
        return (score_drop(parity), _precision_rank(exports[r["format"]].get("precision")),
                r["p50_ms"], r["format"], r["backend"])

    best = min(tied, key=rank)
    for r in candidates:
        if r is not best:
            excluded[f"{r['format']} on {r['backend']}"] = (
                f"tied within {100 * tie_tolerance:.0f}% ({r['p50_ms']:.4g} ms) and lost on score drop/precision"
                if r in tied else f"slower ({r['p50_ms']:.4g} ms)")
    art, parity = exports[best["format"]], _parity(exports[best["format"]], best)
    same_fp32 = next((r for r in fp32 if r["backend"] == best["backend"]), bar)
    teacher = _teacher_row(trows, best["backend"], best["threads"])
    rec = {
        **base, "format": best["format"], "backend": best["backend"], "threads": best["threads"],
        "device": best.get("device", "cpu"), "path": art.get("path"), "precision": art.get("precision"),
        "p50_ms": best["p50_ms"], "accuracy": parity.get("accuracy"), "accuracy_drop": parity.get("accuracy_drop"),
        # a 0 ms p50 (a clock tick too coarse) has no ratio: None, never inf (the record refuses it)
        "speedup_vs_fp32_onnx": same_fp32["p50_ms"] / best["p50_ms"] if same_fp32 and best["p50_ms"] > 0 else None,
        "fp32_onnx_reference": f"student (onnx, {same_fp32['backend']})" if same_fp32 else None,
        "speedup_vs_teacher": teacher["p50_ms"] / best["p50_ms"] if teacher and best["p50_ms"] > 0 else None,
        "teacher_reference": f"teacher ({teacher['format']}, {teacher['backend']})" if teacher else None,
    }
    if "cpu_p50_ms" in best:
        rec["cpu_p50_ms"] = best["cpu_p50_ms"]
    if teacher is None:
        rec["teacher_missing"] = teacher_skips.get(best["backend"], f"the teacher was not measured on {best['backend']}")
    return rec


def update_run(run, command: str = "recommend") -> dict[str, dict]:
    """Recompute `recommended` in a run directory's report.json (replacing the section, not
    merging it, so a target that is no longer profiled does not linger). Refused when an artifact
    changed after validate: its parity would speak for another file."""
    run.require_unchanged_artifacts(command)
    recommended = recommend(run.load_report())
    run.replace_report(recommended=recommended)
    return recommended
