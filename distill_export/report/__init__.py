"""Stage 6: the run record (report.json, distill_export/record) rendered for people: report.md,
an offline report.html, PNG plots under plots/, and the terminal summaries.

    tables.py          rows and lines shared by every output (latency, speedups, recommendations)
    view.py            the record's task's view (tasks/: classification's sentences and tables)
    plots.py           latency, accuracy vs latency, training curves
    markdown.py, html.py, terminal.py   the three renderers
    outputs.py         the files written into a run directory (or `profile --out DIR`)
"""

from distill_export.report import plots
from distill_export.tasks.classification.report import (
    FUSION_WORDS,
    _modality_gap_note,
    accuracy_rows,
    kd_verdict,
    modality_gap_note,
    parity_rows,
    rounds_sentence,
    teacher_fusion_line,
)
from distill_export.report.html import render_html
from distill_export.report.markdown import render_markdown
from distill_export.report.outputs import write_latency_csv, write_profile_outputs, write_reports
from distill_export.report.plots import (
    PLOTS_SKIPPED,
    make_plots,
    plot_latency,
    plot_tradeoff,
    plot_training,
    tradeoff_points,
)
from distill_export.report.tables import (
    LATENCY_HEADER,
    SPEEDUP_HEADER,
    headline_speedups,
    latency_table,
    like_for_like,
    profile_context,
    recommendation_lines,
    speedup_table,
)
from distill_export.report.terminal import print_deployment, print_latency, print_parity, print_summary, summary_rows

__all__ = [
    "FUSION_WORDS", "LATENCY_HEADER", "PLOTS_SKIPPED", "SPEEDUP_HEADER", "_modality_gap_note", "accuracy_rows",
    "headline_speedups", "kd_verdict", "latency_table", "like_for_like", "make_plots", "modality_gap_note",
    "parity_rows", "plot_latency", "plot_tradeoff", "plot_training", "plots", "print_deployment", "print_latency",
    "print_parity", "print_summary", "profile_context", "recommendation_lines", "render_html", "render_markdown",
    "rounds_sentence", "speedup_table", "summary_rows", "teacher_fusion_line", "tradeoff_points",
    "write_latency_csv", "write_profile_outputs", "write_reports",
]
