"""Every sentence and table of the report that is about detection: the mAP50 / mAP50-95 rows of
each model, per-class AP, the kd verdict (a paired bootstrap over test images) with the
self-training control, and the parity table in detection terms (|ΔmAP50|, matched detections).
It reads the run record only (report.json), never a model; the names are the view's
(tasks/report_view.py)."""

from __future__ import annotations

from distill_export.record import RunRecord
from distill_export.record.metrics import PairedComparison
from distill_export.record.models import Distill, Export
from distill_export.record.format import html_table, html_text, md_table, md_text, pct, reads_record
from distill_export.tasks.report_view import fit_sentence, labels_kept, tune_sentence

# The rows of the mAP table, in order, and what each is; any other model in the record follows.
MODEL_LABELS = {
    "teacher": "teacher (all modalities)",
    "self_training_teacher": "one-frame teacher (for the self-training control)",
    "baseline": "baseline (labels only)",
    "self_training": "self-training control",
    "student": "student (distilled)",
    "oracle": "oracle (all labels)",
}
MAP_HEADER = ["model", "mAP50", "mAP50-95", "images", "objects"]
PARITY_HEADER = ["format", "precision", "size", "ΔmAP50 (abs.)", "matched detections", "max score diff",
                 "max box diff (px)", "mAP50", "gates"]
SCORE_LABEL = "test mAP50 (%)"  # the y axis of the score vs latency plot
VAL_SCORE_LABEL = "validation mAP50"  # the training curves' score
SUMMARY_SCORE_HEADER = "mAP50"  # the terminal summary's score column


def _map(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _models(record: RunRecord) -> list[str]:
    known = [m for m in MODEL_LABELS if m in record.metrics]
    return known + [m for m in record.metrics if m not in MODEL_LABELS]


def _metric(record: RunRecord, model: str, key: str):
    m = record.metrics.get(model)
    return getattr(m, key, None) if m is not None else None


@reads_record
def map_rows(record: RunRecord) -> list[list[str]]:
    """One row per model with mAP50 and mAP50-95 (in points) on the test split."""
    return [[MODEL_LABELS.get(name, name), _map(_metric(record, name, "map50")),
             _map(_metric(record, name, "map50_95")), str(_metric(record, name, "n_images") or "-"),
             str(_metric(record, name, "n_objects") or "-")]
            for name in _models(record) if _metric(record, name, "map50") is not None]


@reads_record
def per_class_table(record: RunRecord) -> tuple[list[str], list[list[str]]]:
    """(header, rows): AP50 of each class for each model that has per-class numbers."""
    models = [m for m in _models(record) if _metric(record, m, "per_class")]
    if not models:
        return [], []
    classes: dict[str, int] = {}
    for m in models:
        for name, c in _metric(record, m, "per_class").items():
            classes.setdefault(name, int(c.n_objects or 0))
    header = ["class", "objects", *(f"AP50 {m}" for m in models)]
    rows = [[name, str(n), *(_map(getattr(_metric(record, m, "per_class").get(name), "ap50", None)) for m in models)]
            for name, n in classes.items()]
    return header, rows


@reads_record
def parity_rows(record: RunRecord) -> list[list[str]]:
    rows = []
    for fmt, art in record.exports.items():
        p = art.parity
        if p is None:
            continue
        get = lambda key: getattr(p, key, None)  # noqa: E731  (detection's parity keys are extras)
        matched = get("matched_detections")
        extra = f" + {get('extra_count')} extra" if get("extra_count") else ""  # the candidate's, matching none
        counts = f" ({get('matched_count')}/{get('reference_count')}{extra})" if get("reference_count") is not None else ""
        gates = ", ".join(f"{k} {'PASS' if g.passed else 'FAIL'}" for k, g in p.gates.items())
        size = f"{(art.size_bytes or 0) / 1024:.1f} KiB"
        rows.append([fmt, art.precision or "", size, _num(get("map50_delta"), ".4f"),
                     (pct(matched) + counts) if matched is not None else "n/a", _num(get("max_score_diff"), ".2e"),
                     _num(get("max_box_diff_px"), ".3f"), _map(get("map50")), gates])
    return rows


def _num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def model_score(record: RunRecord, model: str, fmt: str) -> float | None:
    """The test mAP50 of `model` in `fmt` (a PyTorch model's metrics, an export's parity)."""
    if fmt == "pytorch":
        return _metric(record, model, "map50")
    arts = record.exports if model == "student" else record.teacher_exports if model == "teacher" else {}
    art = arts.get(fmt)
    return getattr(art.parity, "map50", None) if art is not None and art.parity is not None else None


def summary_entries(record: RunRecord) -> list[tuple[str, str, str, str]]:
    """(model, format, mAP50, parity) for the terminal summary, teacher first."""
    entries = [(m, "pytorch", _map(_metric(record, m, "map50")), "-") for m in _models(record)
               if _metric(record, m, "map50") is not None]
    t_onnx = record.teacher_exports.get("onnx") or Export()
    if t_onnx.parity is not None:
        entries.insert(1, ("teacher", "onnx", _map(getattr(t_onnx.parity, "map50", None)),
                           "PASS" if t_onnx.parity.passed else "FAIL"))
    for fmt, art in record.exports.items():
        p = art.parity
        entries.append(("student", fmt, _map(getattr(p, "map50", None)) if p else "-",
                        ("PASS" if p.passed else "FAIL") if p else "-"))
    return entries


def _setting(d: Distill) -> str:
    terms = " + ".join(f"{t.weight:g}·{t.name}" + (f"(threshold={t.threshold:g})" if t.threshold is not None else "")
                       for t in d.terms or [])
    return f"{terms or 'no terms recorded'}; {labels_kept(d, 'at least one image')}"


def _stats(c: PairedComparison | None) -> str:
    if c is None or c.ci95 is None:
        return "no paired test"
    lo, hi = c.ci95
    n_img = getattr(c, "n_images", None)
    over = f" over {n_img} test images" if n_img else ""
    p = f", p={c.p_value:.2g}" if c.p_value is not None else ""
    return f"95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, paired bootstrap{over}{p}"


@reads_record
def kd_verdict(record: RunRecord) -> str:
    """One honest sentence on whether distillation paid, in mAP50 points, with its bootstrap
    interval and p-value, then what the self-training control says of the teacher's video."""
    gain = record.kd_gain
    if gain is None:
        return ""
    d = record.distill or Distill()
    if d.distilled is False:
        return (f"No distillation: labels_only. The student is the labels-only baseline (one training), so kd_gain is "
                f"0 by construction. Setting: {_setting(d)}.")
    stats = _stats(record.comparisons.get("student_vs_baseline"))
    verdict = record.kd_verdict or "not tested"
    if verdict == "paid":
        text = (f"Distillation paid: the student beats the labels-only baseline by {100 * gain:+.1f} mAP50 points "
                f"({stats}).")
    elif verdict == "hurt":
        text = (f"Distillation hurt: the student is {100 * -gain:.1f} mAP50 points below the labels-only baseline "
                f"({stats}).")
    else:
        text = f"No significant difference from the labels-only baseline ({100 * gain:+.1f} mAP50 points; {stats})."
    control = record.comparisons.get("student_vs_self_training")
    if control is not None:
        st = record.comparisons.get("self_training_vs_baseline")
        text += (" Self-training control (a one-frame teacher built with teacher.width, same rows and terms): "
                 f"{100 * (st.gain if st else 0):+.1f} points over the baseline; the teacher's other modalities added "
                 f"{100 * control.gain:+.1f} points over it ({_stats(control)}; {control.verdict or 'not tested'}).")
    return f"{text} Setting: {_setting(d)}."


@reads_record
def markdown_sections(record: RunRecord) -> list[str]:
    """report.md's mAP, verdict, per-class and parity sections (lines)."""
    parts = []
    if map_rows(record):
        parts += ["", "## Detection (test split)", "", md_table(MAP_HEADER, map_rows(record)), "",
                  "mAP in points (COCO's 101-point AP, area 'all', faster-coco-eval).", ""]
    if record.kd_gain is not None:
        gain = f"**kd_gain** = student − baseline = {100 * record.kd_gain:+.2f} mAP50 points."
        parts += [f"{gain} {kd_verdict(record)}", ""]
        if fit_sentence(record, "mAP50"):
            parts += [fit_sentence(record, "mAP50"), ""]
        if tune_sentence(record):
            parts += [tune_sentence(record, md_text), ""]  # its decision line is tune.json's text
    header, rows = per_class_table(record)
    if rows:
        parts += ["### AP50 per class", "", md_table(header, rows), ""]
    if parity_rows(record):
        parts += ["## Exports and parity (vs the PyTorch student, matched detections)", "",
                  md_table(PARITY_HEADER, parity_rows(record)), ""]
    return parts


@reads_record
def html_sections(record: RunRecord) -> list[str]:
    """report.html's mAP, verdict, per-class and parity sections (HTML fragments)."""
    sections = []
    if map_rows(record):
        sections += ["<h2>Detection (test split)</h2>", html_table(MAP_HEADER, map_rows(record)),
                     "<p>mAP in points (COCO's 101-point AP, area 'all', faster-coco-eval).</p>"]
    if record.kd_gain is not None:
        sections.append(f"<p><b>kd_gain</b> = {100 * record.kd_gain:+.2f} mAP50 points. "
                        f"{html_text(kd_verdict(record))}</p>")
        if fit_sentence(record, "mAP50"):
            sections.append(f"<p>{html_text(fit_sentence(record, 'mAP50'))}</p>".replace("**", ""))
    header, rows = per_class_table(record)
    if rows:
        sections += ["<h3>AP50 per class</h3>", html_table(header, rows)]
    if parity_rows(record):
        sections += ["<h2>Exports and parity (vs the PyTorch student, matched detections)</h2>",
                     html_table(PARITY_HEADER, parity_rows(record))]
    return sections


@reads_record
def terminal_lines(record: RunRecord) -> list[str]:
    """The verdict line printed after `run`."""
    if record.kd_gain is None:
        return []
    return [f"kd_gain: {100 * record.kd_gain:+.2f} mAP50 points. {kd_verdict(record)}"]
