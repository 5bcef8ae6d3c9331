"""report.html (and profile.html), rendered from the typed run record: one self-contained page,
no scripts, no fonts, no network fetches; plots by relative path."""

from __future__ import annotations

from pathlib import Path

from distill_export.record import RunRecord
from distill_export.report.view import task_view
from distill_export.record.format import html_table, html_text
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

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
         "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}")


def _items(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html_text(x)}</li>" for x in lines) + "</ul>"


@reads_record
def render_html(record: RunRecord, plots: list[Path], note: str = "", warning: str = "") -> str:
    esc = html_text
    ds = record.dataset
    sections = ["<h1>distill-export report</h1>"] + ([f"<p><b>Warning:</b> {esc(warning)}</p>"] if warning else [])
    if given(ds):
        sections.append(f"<p>Dataset <b>{esc(str(ds.name))}</b>: {esc(dataset_sizes(ds))}, "
                        f"{esc(str(ds.labeled_train_rows))} labeled training rows.</p>")
    sections += task_view(record).html_sections(record)
    if plots or note:
        sections.append("<h2>Plots</h2>")
    for p in plots:
        sections.append(f'<figure><a href="plots/{esc(p.name)}"><img src="plots/{esc(p.name)}" alt="{esc(p.stem)}"></a>'
                        f"<figcaption>{esc(p.stem.replace('_', ' '))}</figcaption></figure>")
    if note:
        sections.append(f"<p><i>{esc(note)}</i></p>")
    if record.latency:
        sections += ["<h2>Latency</h2>", f"<p>{esc(profile_context(record))}</p>"]
        if headline_speedups(record):
            sections += ["<h3>Like for like (student vs teacher on the same runtime)</h3>",
                         _items(headline_speedups(record))]
        if recommendation_lines(record):
            sections += ["<h3>Recommended artifact per target</h3>", _items(recommendation_lines(record))]
        if speedup_table(record):
            sections += ["<h3>Speedups (p50 of the reference / p50 of the model, same run and cell)</h3>",
                         html_table(SPEEDUP_HEADER, speedup_table(record))]
        sections += ["<h3>All rows</h3>", html_table(LATENCY_HEADER, latency_table(record)),
                     '<p>As CSV: <a href="latency.csv">latency.csv</a>.</p>']
    if record.timings:
        sections += ["<h2>Timings (s)</h2>",
                     f"<p>{esc(', '.join(f'{k}: {v:.1f}' for k, v in record.timings.items()))}</p>"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>distill-export report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
