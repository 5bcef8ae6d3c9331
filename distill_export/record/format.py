"""Formatting shared by every renderer of the run record, the tasks' report views included:
percentages, Markdown and HTML tables, and a decorator that lets a renderer take the typed
record or a report.json dict (any version, via migrate)."""

from __future__ import annotations

import re


def reads_record(fn):
    """Let a renderer take the typed record or a report.json dict (any version, via migrate)."""
    import functools

    from distill_export.record import as_record

    @functools.wraps(fn)
    def wrapper(report, *args, **kwargs):
        return fn(as_record(report), *args, **kwargs)

    return wrapper


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """Control characters (a newline, ESC[2J from a class name) shown as escapes, never sent raw
    to a terminal or a report (twenty-seventh audit D1, D4)."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], str(text))


def md_text(text) -> str:
    """A user's string (a class, a dataset, a decision line) as Markdown shows it: printable, a
    `|` that would split a table cell escaped, and an HTML tag start made text (`<img onerror=...>`
    is live in viewers that pass inline HTML: D1, D3). `p < 0.05` stays as written."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", printable(text).replace("|", "\\|"))


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

