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


_MD_SPECIAL = re.compile(r"([\\`*_~\[\]|])")  # ~: GFM strikethrough (twenty-ninth audit B2)


def md_text(text) -> str:
    """A user's string (a class, a dataset, a decision line) shown as written in Markdown:
    printable, `&` and an HTML tag start as entities (`<img onerror=...>` is live in viewers that
    pass inline HTML: twenty-seventh audit D1, D3), and Markdown's own characters backslash-escaped
    (`__my_data__` rendered as bold, `a|b` split a table cell: twenty-eighth B3). `p < 0.05` stays."""
    text = printable(text).replace("&", "&amp;")
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_text(text) -> str:
    """A user's string in report.html: printable (an ESC byte in a class name recoloured the
    terminal of whoever ran `cat report.html`: thirty-fifth audit A1), then HTML-escaped."""
    import html

    return html.escape(printable(text))


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

