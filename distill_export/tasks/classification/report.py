"""Every sentence and table of the report that is about classification: accuracy rows, the
kd verdict (a paired McNemar test), the modality-gap note, the teacher fusion and rounds
sentences, the parity table (top-1 agreement), and the accuracy each model is plotted and
summarised with. The task seam takes this module over (tasks/classification/); the other
report modules call only the names below."""

from __future__ import annotations

from distill_export.record import RunRecord
from distill_export.record.metrics import PairedComparison
from distill_export.record.models import Distill, Export
from distill_export.record.format import html_table, html_text, md_table, md_text, pct, reads_record
from distill_export.tasks.report_view import fit_sentence, labels_kept, tune_sentence

MODELS = ("teacher", "baseline", "self_training", "student")  # the rows of the accuracy table, in order
ACCURACY_HEADER = ["model", "accuracy", "macro F1", "macro precision", "macro recall"]
PARITY_HEADER = ["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"]
SCORE_LABEL = "test accuracy (%)"  # the y axis of the accuracy vs latency plot
VAL_SCORE_LABEL = "validation accuracy"  # the training curves' score
SUMMARY_SCORE_HEADER = "acc."  # the terminal summary's score column
FUSION_WORDS = {
    "concat": "concat (modality embeddings concatenated, one MLP)",
    "late": "late (a product of per-modality experts: their log-softmaxes summed)",
}


@reads_record
def accuracy_rows(record: RunRecord) -> list[list[str]]:
    rows = []
    for name in MODELS:
        m = record.metrics.get(name)
        if m is not None:
            rows.append([name, pct(m.accuracy), f"{m.macro_f1:.3f}", f"{m.macro_precision:.3f}",
                         f"{m.macro_recall:.3f}"])
    return rows


@reads_record
def parity_rows(record: RunRecord) -> list[list[str]]:
    rows = []
    for fmt, art in record.exports.items():
        p = art.parity
        if p is None:
            continue
        gates = ", ".join(f"{k} {'PASS' if g.passed else 'FAIL'}" for k, g in p.gates.items())
        rows.append([fmt, art.precision, f"{art.size_bytes / 1024:.1f} KiB", f"{p.max_abs_diff:.2e}",
                     pct(p.top1_agreement), pct(p.accuracy), gates])
    return rows


def model_score(record: RunRecord, model: str, fmt: str) -> float | None:
    """The test accuracy of `model` in `fmt` (a PyTorch model's metrics, an export's parity)."""
    if fmt == "pytorch" and model in record.metrics:
        return record.metrics[model].accuracy
    # the teacher's ONNX export is measured and profiled too (47th audit M1: it was left off the plot)
    arts = record.exports if model == "student" else record.teacher_exports if model == "teacher" else {}
    art = arts.get(fmt)
    return art.parity.accuracy if art is not None and art.parity is not None else None


def summary_entries(record: RunRecord) -> list[tuple[str, str, str, str]]:
    """(model, format, accuracy, parity) for the terminal summary, teacher first."""
    entries = [(m, "pytorch", pct(record.metrics[m].accuracy), "-") for m in MODELS if m in record.metrics]
    t_onnx = record.teacher_exports.get("onnx") or Export()
    if t_onnx.parity is not None:  # the teacher's own ONNX: its accuracy, and parity vs the PyTorch teacher
        entries.insert(1, ("teacher", "onnx", pct(t_onnx.parity.accuracy), _pass(t_onnx.parity.passed)))
    for fmt, art in record.exports.items():
        p = art.parity
        entries.append(("student", fmt, pct(p.accuracy) if p else "-", _pass(p.passed) if p else "-"))
    return entries


def _pass(passed: bool | None) -> str:
    return "PASS" if passed else "FAIL"


def _setting(d: Distill) -> str:
    if d.terms:
        shown = " + ".join(
            f"{t.weight:g}·{t.name}" + (f"(T={t.temperature:g})" if t.temperature is not None else "")
            + (f"(threshold={t.threshold:g})" if t.threshold is not None else "") for t in d.terms)
        method = d.method if d.method is not None else "terms"
        desc = f"{method}: {shown}" if method != "terms" else shown
    else:  # older reports
        desc = f"T={d.temperature}, α={d.alpha}, β={d.beta}"
    return f"{desc}; {labels_kept(d, 'at least one per class')}"


def _ci(c: PairedComparison | None) -> str:
    if c is None or c.ci95 is None:
        return ""
    lo, hi = c.ci95
    return f"95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, McNemar p={c.p_value:.2g}"


@reads_record
def kd_verdict(record: RunRecord) -> str:
    """One honest sentence on whether distillation paid, with its paired test when present."""
    gain = record.kd_gain
    if gain is None:
        return ""
    d = record.distill or Distill()
    setting = _setting(d)
    verdict = record.kd_verdict
    if verdict is None:  # older reports: no paired test
        verdict = "paid" if gain > 0.005 else "hurt" if gain < -0.005 else "no significant difference"
        stats = "one run, no paired test"
    else:
        stats = _ci(record.comparisons.get("student_vs_baseline"))
    if d.distilled is False:  # a labels-only objective: the student is the baseline itself
        return (f"No distillation: labels_only. The student is the labels-only baseline (one training), so "
                f"kd_gain is 0 by construction. Setting: {setting}.")
    if verdict == "paid":
        text = f"Distillation paid: the student beats the labels-only baseline by {100 * gain:+.1f} points ({stats})."
    elif verdict == "hurt":
        text = f"Distillation hurt: the student is {100 * -gain:.1f} points below the labels-only baseline ({stats})."
    else:
        text = f"No significant difference from the labels-only baseline ({100 * gain:+.1f} points; {stats})."
    control = record.comparisons.get("student_vs_self_training")
    if control is not None:
        st = record.comparisons.get("self_training_vs_baseline")
        # "same size" held only for a teacher trained here; a loaded one may be any size (thirteenth audit B3)
        text += (f" Self-training control (an image-only teacher built with teacher.width, same rows and terms): "
                 f"{100 * (st.gain if st else 0):+.1f} points over the baseline; the teacher's other modalities "
                 f"added {100 * control.gain:+.1f} points over it ({_ci(control)}).")
    return f"{text} Setting: {setting}."


@reads_record
def teacher_fusion_line(record: RunRecord, name=str) -> str:
    """Which teacher fusion ran ("" for reports from before teacher.fusion existed)."""
    fusion = record.teacher.fusion if record.teacher else None
    if not fusion:
        return ""
    return f"Teacher fusion: {FUSION_WORDS.get(fusion, fusion)}.{rounds_sentence(record, name)}"


@reads_record
def rounds_sentence(record: RunRecord, name=str) -> str:
    """What the later distillation rounds taught from ("" with one round). name: how a modality
    (a user's column name) is written: md_text in report.md (52nd audit F1)."""
    training = record.distill.student_training if record.distill else None
    history = (training.rounds if training else None) or []
    if len(history) < 2:
        return ""
    last = history[-1].teacher
    experts = ", ".join(f"{name(m)} expert {pct(e.best_val_accuracy)} val" for m, e in last.experts.items())
    per_round = ", ".join(f"round {h.round} {pct(h.best_val_accuracy)}" for h in history)
    return (f" {len(history)} distillation rounds: from round 2 the teacher is the previous round's student times "
            f"an expert of each other modality re-fitted on the rows that student labeled (co-training; round "
            f"{history[-1].round}: {experts or 'no other modality'}, teacher {pct(last.teacher_val_accuracy)} val). "
            f"Student val accuracy by round: {per_round} (the last round is kept). The self-training control had as "
            f"many rounds, each from its own previous student. The teacher rows are round 1's teacher.")


@reads_record
def modality_gap_note(record: RunRecord) -> str:
    """Why distillation can or cannot pay here: what the teacher knows from the student's modality."""
    probe = record.teacher.modality_probe if record.teacher else {}
    teacher, base = record.metrics.get("teacher"), record.metrics.get("baseline")
    # The teacher through the student's modality alone: the single `without_<other>` probe with
    # two modalities, the `only_<student>` probe with more (each `without_` keeps the rest).
    only = [v for k, v in probe.items() if k.startswith("only_")]
    alone = only[0] if only else (next(iter(probe.values())) if len(probe) == 1 else None)
    if alone is None or teacher is None or base is None:
        return ""
    d = record.distill
    lab = (d.label_fraction_kept if d.label_fraction_kept is not None else d.label_fraction) if d else 1.0
    note = (f"The teacher scores {pct(teacher.accuracy)}; with only the student's modality it scores {pct(alone)}, "
            f"the baseline {pct(base.accuracy)}.")
    if alone <= base.accuracy + 0.01:
        note += (" Through the student's modality alone the teacher knows no more than the baseline: its edge lives "
                 "in modalities the student cannot see (the modality gap), so distillation has little to transfer.")
    elif lab < 1.0:
        note += (" The teacher knows more than the baseline through the student's own modality, and it labels the "
                 f"{pct(1 - lab)} of training rows that have no label: that is where distillation can pay.")
    return note


_modality_gap_note = modality_gap_note  # the name tests and tools imported from report.py


def _probe_line(record: RunRecord, name=str) -> str:
    """name: how a probe (`without_<a user's column>`) is written: md_text in report.md (52nd audit F1)."""
    probe = record.teacher.modality_probe if record.teacher else {}
    if not probe:
        return ""
    return ("Teacher accuracy with one modality zeroed (the modality gap): "
            + ", ".join(f"{name(k)}: {pct(v)}" for k, v in probe.items()))


def markdown_sections(record: RunRecord) -> list[str]:
    """report.md's accuracy, verdict and parity sections (lines)."""
    parts = ["", "## Accuracy (test split)", "", md_table(ACCURACY_HEADER, accuracy_rows(record)), ""]
    if record.kd_gain is not None:
        parts += [f"**kd_gain** = student − baseline = {100 * record.kd_gain:+.2f} points. {kd_verdict(record)}", ""]
        parts += [modality_gap_note(record), ""]
        if fit_sentence(record):
            parts += [fit_sentence(record), ""]
        if tune_sentence(record):
            parts += [tune_sentence(record, md_text), ""]  # its decision line is tune.json's text
    if teacher_fusion_line(record):
        parts += [teacher_fusion_line(record, md_text), ""]
    if _probe_line(record):
        parts += [_probe_line(record, md_text), ""]
    if parity_rows(record):
        parts += ["## Exports and parity (vs the PyTorch student)", "",
                  md_table(PARITY_HEADER, parity_rows(record)), ""]
    return parts


def html_sections(record: RunRecord) -> list[str]:
    """report.html's accuracy, verdict and parity sections (HTML fragments)."""
    esc = html_text
    sections = []
    if accuracy_rows(record):
        sections += ["<h2>Accuracy (test split)</h2>", html_table(ACCURACY_HEADER, accuracy_rows(record))]
    if record.kd_gain is not None:
        sections.append(f"<p><b>kd_gain</b> = {100 * record.kd_gain:+.2f} points. {esc(kd_verdict(record))}</p>")
        sections.append(f"<p>{esc(modality_gap_note(record))}</p>")
        if fit_sentence(record):
            sections.append(f"<p>{esc(fit_sentence(record))}</p>".replace("**", ""))
        if tune_sentence(record):
            sections.append(f"<p>{esc(tune_sentence(record))}</p>")
    if teacher_fusion_line(record):
        sections.append(f"<p>{esc(teacher_fusion_line(record))}</p>")
    if _probe_line(record):
        sections.append(f"<p>{esc(_probe_line(record))}</p>")
    if parity_rows(record):
        sections += ["<h2>Exports and parity (vs the PyTorch student)</h2>",
                     html_table(PARITY_HEADER, parity_rows(record))]
    return sections


def terminal_lines(record: RunRecord) -> list[str]:
    """The verdict line printed after `run`."""
    if record.kd_gain is None:
        return []
    return [f"kd_gain: {100 * record.kd_gain:+.2f} points. {kd_verdict(record)}"]
