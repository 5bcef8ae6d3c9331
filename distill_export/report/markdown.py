"""report.md, rendered from the typed run record."""

from __future__ import annotations

from pathlib import Path

from distill_export.record import RunRecord
from distill_export.recommend import tie_break
from distill_export.report.view import task_view
from distill_export.record.format import md_table, md_text
from distill_export.report.tables import (
    LATENCY_HEADER,
    SPEEDUP_HEADER,
    dataset_sizes,
    given,
    headline_speedups,
    latency_table,
    profile_context,
    reads_record,
    recommendation_lines,
    speedup_table,
)


@reads_record
def render_markdown(record: RunRecord, plots: list[Path], note: str = "", warning: str = "") -> str:
    """warning: said first, before any number (report.json edited by hand: RunIdentity.record_edited)."""
    ds = record.dataset
    parts = ["# distill-export report", ""] + ([f"> **Warning:** {md_text(warning)}", ""] if warning else [])
    if given(ds):
        parts.append(
            f"Dataset **{md_text(ds.name)}**: {dataset_sizes(ds)}, {ds.labeled_train_rows} labeled training rows."
            # Only the built-in demo holds voices out (data/avdigits.py records them).
            + (" Test audio voices are never seen in training." if ds.test_voices else "")
        )
    parts += task_view(record).markdown_sections(record)
    if record.latency:
        parts += ["## Latency", "", profile_context(record), "", md_table(LATENCY_HEADER, latency_table(record)), "",
                  "All rows: [latency.csv](latency.csv). Page with tables and plots: [report.html](report.html).", ""]
        if headline_speedups(record):
            parts += ["**Like for like** (student vs teacher on the same runtime; the cross-runtime ratios below, "
                      "marked 'no', mix the runtime's gain with the student's):", ""]
            parts += [f"- {line}" for line in headline_speedups(record)] + [""]
        if speedup_table(record, batch=1):
            parts += ["Speedups at batch 1 (p50 of the reference / p50 of the model, same run and cell):", "",
                      md_table(SPEEDUP_HEADER, speedup_table(record, batch=1)), ""]
    if recommendation_lines(record):
        parts += ["## Recommended artifact per target", "",
                  "The fastest export that passed every parity gate, never one slower than the FP32 ONNX "
                  f"(artifacts within 5% of the fastest count as tied; {tie_break(record)}):", ""]
        parts += [f"- {line}" for line in recommendation_lines(record)] + [""]
    for p in plots:
        parts += [f"[![{p.stem}](plots/{p.name})](plots/{p.name})", ""]
    if note:
        parts += [f"_{note}_", ""]
    if record.timings:
        parts += ["## Timings (s)", "", ", ".join(f"{k}: {v:.1f}" for k, v in record.timings.items()), ""]
    return "\n".join(parts)
