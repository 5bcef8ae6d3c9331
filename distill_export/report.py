"""Stage 6: report.json (written by every stage) rendered for people: report.md,
an offline report.html, and PNG plots under plots/."""

from __future__ import annotations

import html
from pathlib import Path

from distill_export.files import atomic_path, write_text
from distill_export.rundir import RunDir


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def accuracy_rows(report: dict) -> list[list[str]]:
    metrics = report.get("metrics", {})
    rows = []
    for name in ("teacher", "baseline", "student"):
        m = metrics.get(name)
        if m:
            rows.append([name, _pct(m["accuracy"]), f"{m['macro_f1']:.3f}", f"{m['macro_precision']:.3f}", f"{m['macro_recall']:.3f}"])
    return rows


def parity_rows(report: dict) -> list[list[str]]:
    rows = []
    for fmt, art in report.get("exports", {}).items():
        p = art.get("parity")
        if not p:
            continue
        gates = ", ".join(f"{k} {'PASS' if g['passed'] else 'FAIL'}" for k, g in p["gates"].items())
        rows.append([
            fmt, art["precision"], f"{art['size_bytes'] / 1024:.1f} KiB", f"{p['max_abs_diff']:.2e}",
            _pct(p["top1_agreement"]), _pct(p["accuracy"]), gates,
        ])
    return rows


def latency_table(report: dict) -> list[list[str]]:
    rows = []
    for r in report.get("latency", []):
        if "skipped" in r:
            rows.append([r["model"], r["format"], r["backend"], str(r["batch"]), str(r["threads"]), "skipped: " + r["skipped"], "", "", ""])
            continue
        rows.append([
            r["model"], r["format"], r["backend"], str(r["batch"]), str(r["threads"]),
            f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['throughput']:.0f}",
        ])
    return rows


LATENCY_HEADER = ["model", "format", "backend", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "samples/s"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def kd_verdict(report: dict) -> str:
    gain = report.get("kd_gain")
    if gain is None:
        return ""
    d = report.get("distill", {})
    lab = d.get("label_fraction", 1.0)
    setting = f"T={d.get('temperature')}, α={d.get('alpha')}, β={d.get('beta')}, {_pct(lab)} of training labels"
    if gain > 0.005:
        return f"Distillation helped: the student beats the labels-only baseline by {100 * gain:+.1f} points ({setting}), in this one run."
    if gain < -0.005:
        return f"Distillation did not help: the student is {100 * -gain:.1f} points below the labels-only baseline ({setting})."
    return f"Distillation made no measurable difference ({100 * gain:+.1f} points vs the baseline, {setting})."


def plot_latency(report: dict, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("latency", []) if "p50_ms" in r]
    if not rows:
        return None
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(5 * len(threads), 3.8), squeeze=False)
    for ax, t in zip(axes[0], threads):
        series: dict[str, list] = {}
        for r in rows:
            if r["threads"] == t:
                series.setdefault(f"{r['model']} ({r['format']}, {r['backend']})", []).append((r["batch"], r["p50_ms"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="p50 latency (ms)", title=f"{t} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "latency_vs_batch.png")


def plot_tradeoff(report: dict, out: Path) -> Path | None:
    """Accuracy vs p50 latency at batch 1 on one thread: teacher, student, each export."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = {(r["model"], r["format"]): r["p50_ms"] for r in report.get("latency", [])
           if "p50_ms" in r and r["batch"] == 1 and r["threads"] == min(x["threads"] for x in report["latency"])}
    points = []
    metrics = report.get("metrics", {})
    if ("teacher", "pytorch") in lat and "teacher" in metrics:
        points.append(("teacher (pytorch)", lat[("teacher", "pytorch")], metrics["teacher"]["accuracy"]))
    if ("student", "pytorch") in lat and "student" in metrics:
        points.append(("student (pytorch)", lat[("student", "pytorch")], metrics["student"]["accuracy"]))
    for fmt, art in report.get("exports", {}).items():
        if ("student", fmt) in lat and art.get("parity"):
            points.append((f"student ({fmt})", lat[("student", fmt)], art["parity"]["accuracy"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, x, y in points:
        ax.scatter(x, 100 * y, s=40)
        ax.annotate(label, (x, 100 * y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", xlabel="p50 latency, batch 1, 1 thread (ms)", ylabel="test accuracy (%)",
           title="accuracy vs latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out / "accuracy_vs_latency.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def render_markdown(report: dict, plots: list[Path]) -> str:
    ds = report.get("dataset", {})
    parts = ["# distill-export report", ""]
    if ds:
        parts.append(
            f"Dataset **{ds.get('name')}**: {ds.get('sizes')}, {ds.get('labeled_train_rows')} labeled training rows. "
            f"Test audio voices are never seen in training."
        )
    parts += ["", "## Accuracy (test split)", "", _md_table(["model", "accuracy", "macro F1", "macro precision", "macro recall"], accuracy_rows(report)), ""]
    if "kd_gain" in report:
        parts += [f"**kd_gain** = student − baseline = {100 * report['kd_gain']:+.2f} points. {kd_verdict(report)}", ""]
    probe = report.get("teacher", {}).get("modality_probe")
    if probe:
        parts += ["Teacher accuracy with one modality zeroed (the modality gap): "
                  + ", ".join(f"{k}: {_pct(v)}" for k, v in probe.items()), ""]
    if parity_rows(report):
        parts += ["## Exports and parity (vs the PyTorch student)", "",
                  _md_table(["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"], parity_rows(report)), ""]
    if report.get("latency"):
        parts += ["## Latency", "", _md_table(LATENCY_HEADER, latency_table(report)), ""]
        sp = [s for s in report.get("speedups", []) if s["batch"] == 1]
        if sp:
            parts += ["Student speedup over the teacher (p50, same run): "
                      + "; ".join(f"{s['format']} b{s['batch']}/{s['threads']}t ×{s['speedup_vs_teacher']:.1f}" for s in sp), ""]
    for p in plots:
        parts += [f"![{p.stem}](plots/{p.name})", ""]
    if report.get("timings"):
        parts += ["## Timings (s)", "", ", ".join(f"{k}: {v:.1f}" for k, v in report["timings"].items()), ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict, plots: list[Path]) -> str:
    """Self-contained page: no scripts, no fonts, no network fetches; plots by relative path."""
    sections = ["<h1>distill-export report</h1>"]
    sections += ["<h2>Accuracy (test split)</h2>", _html_table(["model", "accuracy", "macro F1", "macro precision", "macro recall"], accuracy_rows(report))]
    if "kd_gain" in report:
        sections.append(f"<p><b>kd_gain</b> = {100 * report['kd_gain']:+.2f} points. {html.escape(kd_verdict(report))}</p>")
    if parity_rows(report):
        sections += ["<h2>Exports and parity</h2>", _html_table(["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"], parity_rows(report))]
    if report.get("latency"):
        sections += ["<h2>Latency</h2>", _html_table(LATENCY_HEADER, latency_table(report))]
    for p in plots:
        sections.append(f'<p><img src="plots/{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>')
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>distill-export report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"


def write_latency_csv(report: dict, path: Path) -> None:
    import csv
    import io

    rows = report.get("latency", [])
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_reports(run: RunDir) -> None:
    report = run.load_report()
    plots_dir = run.file("plots")
    plots = [p for p in (plot_latency(report, plots_dir), plot_tradeoff(report, plots_dir)) if p]
    write_latency_csv(report, run.file("latency.csv"))
    write_text(run.file("report.md"), render_markdown(report, plots))
    write_text(run.file("report.html"), render_html(report, plots))


# ----- terminal summaries -----------------------------------------------------------------


def _rich_table(title: str, header: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    return table


def print_parity(report: dict, console) -> None:
    rows = parity_rows(report)
    if rows:
        header = ["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"]
        console.print(_rich_table("Parity vs the PyTorch student", header, rows))


def print_latency(report: dict, console) -> None:
    rows = latency_table(report)
    if rows:
        console.print(_rich_table("Latency", LATENCY_HEADER, rows))


def print_summary(report: dict, console) -> None:
    """After `run`: accuracy, parity and p50 latency per model/format, and the speedups."""
    lat = {}
    for r in report.get("latency", []):
        if "p50_ms" in r and r["batch"] == 1:
            lat.setdefault((r["model"], r["format"]), {})[r["threads"]] = r["p50_ms"]
    threads = sorted({t for v in lat.values() for t in v})
    rows = []
    metrics = report.get("metrics", {})
    for name in ("teacher", "baseline", "student"):
        if name in metrics:
            p50 = lat.get((name, "pytorch"), {})
            rows.append([name, "pytorch", _pct(metrics[name]["accuracy"]), "-", *[f"{p50[t]:.3f}" if t in p50 else "-" for t in threads]])
    for fmt, art in report.get("exports", {}).items():
        p = art.get("parity", {})
        p50 = lat.get(("student", fmt), {})
        parity = ("PASS" if p.get("passed") else "FAIL") if p else "-"
        rows.append(["student", fmt, _pct(p.get("accuracy")) if p else "-", parity, *[f"{p50[t]:.3f}" if t in p50 else "-" for t in threads]])
    header = ["model", "format", "accuracy", "parity", *[f"p50 ms b1/{t}t" for t in threads]]
    console.print(_rich_table("Summary (test split)", header, rows))
    if "kd_gain" in report:
        console.print(f"kd_gain: {100 * report['kd_gain']:+.2f} points. {kd_verdict(report)}")
    sp = [s for s in report.get("speedups", []) if s["batch"] == 1]
    if sp:
        console.print("student speedup over teacher (p50, batch 1): " + ", ".join(
            f"{s['format']}@{s['threads']}t ×{s['speedup_vs_teacher']:.1f}" for s in sp))
