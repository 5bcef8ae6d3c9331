"""What a task adds to the report, and the generic view a new task gets without writing one.

The renderers (report/) call these names on the view of the record's task (Task.report_view):

    markdown_sections(record), html_sections(record), terminal_lines(record)  the task's own sections
    parity_rows(record), PARITY_HEADER      the parity table of the student's exports
    model_score(record, model, fmt)         the headline metric of a model in a format (the plots)
    summary_entries(record)                 (model, format, score, parity) rows of the terminal summary
    SCORE_LABEL, VAL_SCORE_LABEL, SUMMARY_SCORE_HEADER   axis labels and column heads

tasks/classification/report.py is classification's view (a module with these names). The
generic one below reads only the record: every model's metrics, the headline comparison, the
gates of each export.
"""

from __future__ import annotations

from distill_export.record import RunRecord
from distill_export.record.format import html_table, html_text, md_table, pct, reads_record

MODELS = ("teacher", "baseline", "self_training", "student")


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def labels_kept(d, floor: str) -> str:
    """"5.0% of training labels", the fraction that trained; when whole rows and the floor
    (`floor`, e.g. "at least one per class") made it another than data.label_fraction asked,
    both: "1.0% of training labels (asked 0.5%; whole rows, at least one per class)"."""
    asked, kept = d.label_fraction, getattr(d, "label_fraction_kept", None)
    # the rule of data.dataset.kept_differs, not imported: the report is rendered without torch
    if asked is None or kept is None or not asked > 0 or abs(kept / asked - 1) <= 0.1:  # (older reports: no kept)
        return f"{pct(asked if kept is None else kept)} of training labels"
    return f"{pct(kept)} of training labels (asked {pct(asked)}; whole rows, {floor})"


def fit_sentence(record: RunRecord, headline: str = "accuracy") -> str:
    """One report sentence on whether the student fits the teacher (capacity.training_fit), ""
    without a measurement."""
    fit = record.distill.fit if record.distill else None
    if fit is None or fit.student is None:
        return ""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    view = ("" if fit.teacher_student_view is None
            else f", the teacher through the student's modality alone {pct(fit.teacher_student_view)}")
    text = (f"Fit on {fit.rows} labelled training rows ({headline}): student {pct(fit.student)}, teacher "
            f"{pct(fit.teacher)}{view}.")
    if fit.flagged:
        text += (f" **The student cannot fit what the teacher knows from its modality** (a gap of "
                 f"{100 * fit.gap:.1f} points, above {100 * fit.limit:.0f}): a wider student may gain more from "
                 "this teacher; `tools/kd_gain.py --students A B ...` measures where the gain stops.")
    else:
        text += f" The student fits it (gap {100 * fit.gap:+.1f} points, limit {100 * fit.limit:.0f})."
    return text


def tune_sentence(record: RunRecord, escape=str) -> str:
    """How `run --tune` chose the objective, in one sentence ("" without a search). escape: for
    tune.json's strings (the method, the fusions, the decision line; record.format.md_text in report.md)."""
    tune = record.tune
    if tune is None or tune.decision is None:
        return ""
    # every string from tune.json goes through escape, not the decision line alone (thirty-fourth audit B1)
    chosen = escape(tune.decision.method) if tune.decision.distill else "labels only (no distillation)"
    teachers = ""
    if tune.teachers and len(tune.teachers) > 1:  # the search drew the teacher fusion too
        fusion = tune.decision.teacher_fusion or next((f for f, t in tune.teachers.items() if t.own), "?")
        fusion = escape(str(fusion))
        scores = ", ".join(f"{escape(str(f))} {100 * t.val_score:.1f}%" + (" (the run's)" if t.own else "")
                           for f, t in tune.teachers.items())
        teachers = (f" Teacher: {fusion} fusion, chosen by its students' validation accuracy (the teachers' own "
                    f"validation scores: {scores}).")
    return (f"Objective chosen by `run --tune` on the validation split ({tune.completed} of {tune.trials} trials "
            f"completed, then the best re-trained with fresh seeds against the labels-only baseline): {chosen}; "
            f"{escape(tune.decision.line)}.{teachers}")


class GenericReportView:
    """A task's report from its record alone: metrics as they are named, gates as they are."""

    PARITY_HEADER = ["format", "precision", "size", "gates", "passed"]
    SUMMARY_SCORE_HEADER = "score"

    def __init__(self, headline: str = "score", score_name: str = "score"):
        self.headline = headline
        self.SCORE_LABEL = f"test {headline}"
        self.VAL_SCORE_LABEL = f"validation {score_name}"

    def _metric(self, record: RunRecord, model: str):
        m = record.metrics.get(model)
        return getattr(m, self.headline, None) if m is not None else None

    def metric_rows(self, record: RunRecord) -> tuple[list[str], list[list[str]]]:
        keys = sorted({k for m in record.metrics.values() for k, v in m.model_dump().items()
                       if isinstance(v, (int, float)) and v is not None})
        keys = sorted(keys, key=lambda k: (k != self.headline, k))
        rows = [[name, *(_num(record.metrics[name].model_dump().get(k, "")) for k in keys)]
                for name in MODELS if name in record.metrics]
        return ["model", *keys], rows

    def verdict(self, record: RunRecord) -> str:
        c = record.comparisons.get("student_vs_baseline")
        if c is None:
            return ""
        ci = f" (95% CI {c.ci95[0]:+.4g} to {c.ci95[1]:+.4g})" if c.ci95 else ""
        return (f"Distillation vs the labels-only baseline: {self.headline} {c.gain:+.4g}{ci}, "
                f"verdict: {c.verdict or 'not tested'}.")

    @reads_record
    def parity_rows(self, record: RunRecord) -> list[list[str]]:
        rows = []
        for fmt, art in record.exports.items():
            p = art.parity
            gates = ", ".join(f"{n} {_num(g.value)}" for n, g in (p.gates.items() if p else []))
            rows.append([fmt, art.precision or "", f"{(art.size_bytes or 0) / 1e6:.2f} MB", gates or "-",
                         ("PASS" if p.passed else "FAIL") if p and p.passed is not None else "-"])
        return rows

    def model_score(self, record: RunRecord, model: str, fmt: str) -> float | None:
        if fmt == "pytorch":
            return self._metric(record, model)
        return None  # an export's parity holds the task's parity metrics, not its test metric

    def summary_entries(self, record: RunRecord) -> list[tuple[str, str, str, str]]:
        entries = [(m, "pytorch", _num(self._metric(record, m)), "-") for m in MODELS if m in record.metrics]
        for fmt, art in record.exports.items():
            p = art.parity
            entries.append(("student", fmt, "-", ("PASS" if p.passed else "FAIL") if p else "-"))
        return entries

    def markdown_sections(self, record: RunRecord) -> list[str]:
        header, rows = self.metric_rows(record)
        out = [f"## Test metrics ({record.task.name})", "", md_table(header, rows), ""]
        if self.verdict(record):
            out += [self.verdict(record), ""]
        return out

    def html_sections(self, record: RunRecord) -> list[str]:
        header, rows = self.metric_rows(record)
        out = [f"<h2>Test metrics ({html_text(record.task.name)})</h2>", html_table(header, rows)]
        if self.verdict(record):
            out.append(f"<p>{html_text(self.verdict(record))}</p>")
        return out

    def terminal_lines(self, record: RunRecord) -> list[str]:
        return [self.verdict(record)] if self.verdict(record) else []
