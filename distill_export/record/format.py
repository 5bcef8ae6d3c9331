"""Formatting shared by every renderer of the run record, the tasks' report views included:
percentages, Markdown and HTML tables, and a decorator that lets a renderer take the typed
record or a report.json dict (any version, via migrate)."""

from __future__ import annotations


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


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

