"""What the commands print: the summary after `run`, parity after `validate`, latency after
`profile`; rendered from the typed run record with rich."""

from __future__ import annotations

from distill_export.record import RunRecord
from distill_export.report.view import task_view
from distill_export.record.format import reads_record
from distill_export.report.tables import (
    SPEEDUP_HEADER,
    headline_speedups,
    profile_context,
    recommendation_lines,
    speedup_table,
)


def _rich_table(title: str, header: list[str], rows: list[list[str]], keep_whole: int = 0):
    """keep_whole: how many leading columns (names) never wrap; the numeric headers wrap instead."""
    from rich import box
    from rich.table import Table

    # A light box and one space of padding, so the summary fits an 80-column terminal.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(h, overflow="fold", no_wrap=i < keep_whole)
    for r in rows:
        table.add_row(*r)
    return table


@reads_record
def print_parity(record: RunRecord, console) -> None:
    view = task_view(record)
    rows = view.parity_rows(record)
    if rows:
        console.print(_rich_table("Parity vs the PyTorch student", view.PARITY_HEADER, rows))


@reads_record
def print_latency(record: RunRecord, console) -> None:
    """Measured rows as a table (report.md/html add mean ± std), skipped ones as lines."""
    rows = [[r.model, r.format, r.backend, str(r.batch), str(r.threads), f"{r.p50_ms:.3f}",
             f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput:.0f}"] for r in record.latency if r.measured]
    if rows:
        header = ["model", "format", "backend", "batch", "thr", "p50 ms", "p90 ms", "p99 ms", "samples/s"]
        console.print(_rich_table("Latency", header, rows))
    for r in record.latency:
        if r.skipped is not None:
            where = f" at batch {r.batch}, {r.threads} thread(s)" if r.batch is not None else ""
            console.print(f"skipped {r.model} ({r.format}) on {r.backend}{where}: {r.skipped}", highlight=False)
    if speedup_table(record, batch=1):
        console.print(_rich_table("Speedups at batch 1 (p50, same run)", SPEEDUP_HEADER,
                                  speedup_table(record, batch=1)))
    if profile_context(record):
        console.print(profile_context(record), highlight=False)


@reads_record
def summary_rows(record: RunRecord) -> tuple[list[str], list[list[str]]]:
    """Score, parity and p50 at batch 1 per model/format/backend; speedup on the fewest threads."""
    lat: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in record.latency:
        if r.measured and r.batch == 1:
            lat.setdefault((r.model, r.format), {}).setdefault(r.backend, {})[r.threads] = r.p50_ms
    threads = sorted({t for by_backend in lat.values() for v in by_backend.values() for t in v})
    speed = {(s.model, s.format, s.backend): s.speedup for s in record.speedups
             if s.batch == 1 and threads and s.threads == threads[0] and s.like_for_like}
    view = task_view(record)
    entries = view.summary_entries(record)
    listed = {(m, f) for m, f, _, _ in entries}
    entries += [(m, f, "-", "-") for (m, f) in lat if (m, f) not in listed]  # profiled files without metrics
    rows = []
    for model, fmt, score, parity in entries:
        for backend, p50 in (lat.get((model, fmt)) or {"-": {}}).items():
            sp = speed.get((model, fmt, backend))
            short = backend.replace("onnxruntime", "ort")  # keeps the table within 80 columns
            rows.append([model, fmt, short, score, parity, *[f"{p50[t]:.3f}" if t in p50 else "-" for t in threads],
                         f"×{sp:.1f}" if sp else "-"])
    header = ["model", "format", "backend", view.SUMMARY_SCORE_HEADER, "parity",
              *[f"p50 ms b1 {t}t" for t in threads],
              f"faster b1 {threads[0]}t" if threads else "faster"]
    return header, rows


@reads_record
def print_summary(record: RunRecord, console) -> None:
    """After `run`: score, parity and p50 latency per model/format, and the speedups."""
    header, rows = summary_rows(record)
    console.print(_rich_table("Summary (test split; latency at batch 1, same run)", header, rows, keep_whole=3))
    print_deployment(record, console)
    for line in task_view(record).terminal_lines(record):
        console.print(line)
    # One line per backend and reason (e.g. OpenVINO not installed: the teacher's and the student's ONNX)
    skipped: dict[tuple[str, str], list[str]] = {}
    for r in record.latency:
        if r.skipped is not None and r.batch is None:
            skipped.setdefault((r.backend, r.skipped), []).append(f"{r.model} ({r.format})")
    for (backend, reason), models in skipped.items():  # markup off: "[openvino]" in a reason is not markup
        console.print(f"not profiled: {', '.join(models)} on {backend}: {reason}", highlight=False, markup=False)


@reads_record
def print_deployment(record: RunRecord, console) -> None:
    """The like-for-like speedups (student vs teacher, same runtime) and the recommended
    artifact per profiled target."""
    for line in headline_speedups(record):
        console.print(line, highlight=False)
    for line in recommendation_lines(record):
        console.print(line, highlight=False)
