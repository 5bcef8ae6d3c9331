"""Stage 6's files: report.md, report.html, plots/ and latency.csv from a run directory's
record; profile.json/.html for `profile --out DIR` on files."""

from __future__ import annotations

from pathlib import Path

from distill_export.files import own_folder, write_json, write_text
from distill_export.record import as_record
from distill_export.report import plots as plots_mod
from distill_export.report.html import render_html
from distill_export.report.markdown import render_markdown


def write_latency_csv(rows: list[dict], path: Path) -> None:
    """Every latency row with every key it was recorded with (report.json's rows, as written)."""
    import csv
    import io

    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows([{k: _inert(v) for k, v in r.items()} for r in rows])
    write_text(path, buf.getvalue())


def _inert(value):
    """A text cell a spreadsheet would run as a formula (a model named from its file, `=HYPERLINK(...)`)
    gets a leading apostrophe, OWASP's advice against CSV injection (52nd audit A2); numbers stay."""
    return f"'{value}" if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_reports(run) -> None:
    """report.md, report.html, plots/ and latency.csv of a RunDir, from its report.json."""
    data = run.load_report()
    record = as_record(data)
    plots, note = plots_mod.make_plots(record, own_folder(run.file("plots")))  # never through a link out of the run
    write_latency_csv(data.get("latency", []), run.file("latency.csv"))
    warning = edited_warning(run)
    write_text(run.file("report.md"), render_markdown(record, plots, note, warning))
    write_text(run.file("report.html"), render_html(record, plots, note, warning))


def edited_warning(run) -> str:
    """What the report says first when its report.json is not what the product wrote ("" when it is)."""
    why = run.record_edited()
    return (f"{run.file('report.json')} was edited by hand ({why}); the numbers below are as that file says, "
            "not all as measured; a new run measures them again (distill-export run --out NEW)" if why else "")


def write_profile_outputs(out: Path, rows: list[dict], speedups: list[dict], meta: dict) -> list[Path]:
    """`profile --out DIR` on files: profile.json, latency.csv, a latency plot and profile.html."""
    report = {"latency": rows, "speedups": speedups, "profile": meta}
    write_json(out / "profile.json", report)
    write_latency_csv(rows, out / "latency.csv")
    record = as_record(report)
    plot = plots_mod.plot_latency(record, out / "plots")
    note = plots_mod.PLOTS_SKIPPED if plots_mod._pyplot() is None else ""
    write_text(out / "profile.html", render_html(record, [plot] if plot else [], note))
    return [out / "profile.json", out / "latency.csv", out / "profile.html"] + ([plot] if plot else [])
