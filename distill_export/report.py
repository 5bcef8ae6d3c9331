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
    for name in ("teacher", "baseline", "self_training", "student"):
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


def _opt(v) -> str:
    return "-" if v is None else str(v)


def latency_table(report: dict) -> list[list[str]]:
    """Measured rows, then one line per skipped model/backend with its reason."""
    rows, skipped = [], []
    for r in report.get("latency", []):
        if "skipped" in r:
            skipped.append([r["model"], r["format"], r["backend"], _opt(r.get("batch")), _opt(r.get("threads")),
                            "skipped: " + r["skipped"], "", "", "", "", ""])
            continue
        rows.append([
            r["model"], r["format"], r["backend"], str(r["batch"]), str(r["threads"]),
            f"{r['mean_ms']:.3f} ± {r['std_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
            f"{r['p99_ms']:.3f}", f"{r['cpu_p50_ms']:.3f}" if "cpu_p50_ms" in r else "-", f"{r['throughput']:.0f}",
        ])
    return rows + skipped


LATENCY_HEADER = ["model", "format", "backend", "batch", "threads", "mean ± std ms", "p50 ms", "p90 ms", "p99 ms",
                  "CPU ms/call p50", "samples/s"]
SPEEDUP_HEADER = ["model", "format", "backend", "batch", "threads", "speedup (p50)", "speedup (CPU time)", "vs",
                  "same runtime"]


def _speedup(s: dict) -> float:
    return s.get("speedup", s.get("speedup_vs_teacher"))  # older reports used the longer key


def like_for_like(s: dict) -> bool:
    """Whether a speedup compares the two models on the same runtime (older reports: read the
    reference's backend from its label, "teacher (pytorch-cpu)")."""
    if "like_for_like" in s:
        return bool(s["like_for_like"])
    return str(s.get("reference", "")).endswith(f"({s['backend']})")


def speedup_table(report: dict, batch: int | None = None) -> list[list[str]]:
    rows = []
    for s in report.get("speedups", []):
        if batch is None or s["batch"] == batch:
            rows.append([s["model"], s["format"], s["backend"], str(s["batch"]), str(s["threads"]),
                         f"×{_speedup(s):.2f}", f"×{s['cpu_speedup']:.2f}" if "cpu_speedup" in s else "-",
                         s.get("reference", "teacher"), "yes" if like_for_like(s) else "no (runtimes differ)"])
    return rows


def headline_speedups(report: dict, batch: int = 1) -> list[str]:
    """Student vs teacher on the same runtime, one line per backend at `batch` on the fewest
    threads measured (and one per GPU backend); a backend the teacher did not run on says why."""
    lat = [r for r in report.get("latency", []) if "p50_ms" in r and r["batch"] == batch]
    if not lat:
        return []
    fewest = min(r["threads"] for r in lat if r.get("device", "cpu") == "cpu") if any(
        r.get("device", "cpu") == "cpu" for r in lat) else None
    cells = {(r["backend"], r["threads"]) for r in lat if r["model"] == "student"
             and (r.get("device", "cpu") != "cpu" or r["threads"] == fewest)}
    why_not = {r["backend"]: r["skipped"] for r in report.get("latency", [])
               if r["model"] == "teacher" and "skipped" in r}
    lines = []
    for backend, threads in sorted(cells):
        found = [s for s in report.get("speedups", []) if like_for_like(s) and s["model"] == "student"
                 and s["backend"] == backend and s["batch"] == batch and s["threads"] == threads]
        where = f"{backend}, batch {batch}, {threads} thread(s)"
        if found:
            parts = ", ".join(f"×{_speedup(s):.1f} ({s['format']})" for s in found)
            lines.append(f"student vs teacher on the same runtime ({where}): {parts}")
        else:
            reason = why_not.get(backend, "the teacher was not measured on this runtime")
            lines.append(f"student vs teacher on the same runtime ({where}): no teacher row: {reason}")
    return lines


def profile_context(report: dict) -> str:
    """One line: where and how the latency rows were measured."""
    meta = report.get("profile") or {}
    if not meta:
        return ""
    m, v, st = meta.get("machine", {}), meta.get("versions", {}), meta.get("settings", {})
    parts = [f"{m.get('cpu', '?')} ({m.get('usable_cores', m.get('cores', '?'))} cores"
             + (f", load {m['load_average_1m']}" if "load_average_1m" in m else "") + ")"]
    parts.append(", ".join(f"{k} {v[k]}" for k in ("python", "torch", "onnxruntime", "tensorrt") if k in v))
    if st:
        parts.append(f"warm-up {st.get('warmup_s')} s, then at least {st.get('min_iters')} calls and "
                     f"{st.get('min_time_s')} s per model and cell, interleaved; latency is wall time per call, "
                     "'CPU ms/call' (one thread) the calling thread's CPU time, which other processes cannot inflate")
    if meta.get("peak_rss_mb") is not None:
        parts.append(f"peak RSS {meta['peak_rss_mb']:.0f} MiB")
    parts += meta.get("notes", [])
    return "; ".join(p for p in parts if p) + "."


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _setting(d: dict) -> str:
    terms = d.get("terms")
    if terms:
        shown = " + ".join(
            f"{t['weight']:g}·{t['name']}" + (f"(T={t['temperature']:g})" if "temperature" in t else "")
            + (f"(threshold={t['threshold']:g})" if "threshold" in t else "") for t in terms)
        method = d.get("method", "terms")
        desc = f"{method}: {shown}" if method != "terms" else shown
    else:  # older reports
        desc = f"T={d.get('temperature')}, α={d.get('alpha')}, β={d.get('beta')}"
    return f"{desc}; {_pct(d.get('label_fraction', 1.0))} of training labels"


def _ci(c: dict | None) -> str:
    if not c or "ci95" not in c:
        return ""
    lo, hi = c["ci95"]
    return f"95% CI {100 * lo:+.1f} to {100 * hi:+.1f}, McNemar p={c['p_value']:.2g}"


def kd_verdict(report: dict) -> str:
    """One honest sentence on whether distillation paid, with its paired test when present."""
    gain = report.get("kd_gain")
    if gain is None:
        return ""
    d = report.get("distill", {})
    setting = _setting(d)
    comp = report.get("comparisons", {}).get("student_vs_baseline")
    verdict = report.get("kd_verdict")
    if verdict is None:  # older reports: no paired test
        verdict = "paid" if gain > 0.005 else "hurt" if gain < -0.005 else "no significant difference"
        stats = "one run, no paired test"
    else:
        stats = _ci(comp)
    if d.get("distilled") is False:  # a labels-only objective: the student is the baseline itself
        return (f"No distillation: labels_only. The student is the labels-only baseline (one training), so "
                f"kd_gain is 0 by construction. Setting: {setting}.")
    if verdict == "paid":
        text = f"Distillation paid: the student beats the labels-only baseline by {100 * gain:+.1f} points ({stats})."
    elif verdict == "hurt":
        text = f"Distillation hurt: the student is {100 * -gain:.1f} points below the labels-only baseline ({stats})."
    else:
        text = f"No significant difference from the labels-only baseline ({100 * gain:+.1f} points; {stats})."
    control = report.get("comparisons", {}).get("student_vs_self_training")
    if control:
        st = report.get("comparisons", {}).get("self_training_vs_baseline", {})
        text += (f" Self-training control (an image-only teacher of the same size, same rows and terms): "
                 f"{100 * st.get('gain', 0):+.1f} points over the baseline; the teacher's other modalities "
                 f"added {100 * control['gain']:+.1f} points over it ({_ci(control)}).")
    return f"{text} Setting: {setting}."


FUSION_WORDS = {
    "concat": "concat (modality embeddings concatenated, one MLP)",
    "late": "late (a product of per-modality experts: their log-softmaxes summed)",
}


def teacher_fusion_line(report: dict) -> str:
    """Which teacher fusion ran ("" for reports from before teacher.fusion existed)."""
    fusion = report.get("teacher", {}).get("fusion")
    if not fusion:
        return ""
    return f"Teacher fusion: {FUSION_WORDS.get(fusion, fusion)}.{rounds_sentence(report)}"


def rounds_sentence(report: dict) -> str:
    """What the later distillation rounds taught from ("" with one round)."""
    history = report.get("distill", {}).get("student_training", {}).get("rounds") or []
    if len(history) < 2:
        return ""
    last = history[-1]["teacher"]
    experts = ", ".join(f"{m} expert {_pct(e['best_val_accuracy'])} val" for m, e in last["experts"].items())
    per_round = ", ".join(f"round {h['round']} {_pct(h['best_val_accuracy'])}" for h in history)
    return (f" {len(history)} distillation rounds: from round 2 the teacher is the previous round's student times "
            f"an expert of each other modality re-fitted on the rows that student labeled (co-training; round "
            f"{history[-1]['round']}: {experts or 'no other modality'}, teacher {_pct(last['teacher_val_accuracy'])} val). "
            f"Student val accuracy by round: {per_round} (the last round is kept). The self-training control had as "
            f"many rounds, each from its own previous student. The teacher rows are round 1's teacher.")


def _modality_gap_note(report: dict) -> str:
    """Why distillation can or cannot pay here: what the teacher knows from the student's modality."""
    probe = report.get("teacher", {}).get("modality_probe") or {}
    teacher = report.get("metrics", {}).get("teacher", {}).get("accuracy")
    base = report.get("metrics", {}).get("baseline", {}).get("accuracy")
    # The teacher through the student's modality alone: the single `without_<other>` probe with
    # two modalities, the `only_<student>` probe with more (each `without_` keeps the rest).
    only = [v for k, v in probe.items() if k.startswith("only_")]
    alone = only[0] if only else (next(iter(probe.values())) if len(probe) == 1 else None)
    if alone is None or teacher is None or base is None:
        return ""
    lab = report.get("distill", {}).get("label_fraction", 1.0)
    note = (f"The teacher scores {_pct(teacher)}; with only the student's modality it scores {_pct(alone)}, "
            f"the baseline {_pct(base)}.")
    if alone <= base + 0.01:
        note += (" Through the student's modality alone the teacher knows no more than the baseline: its edge lives "
                 "in modalities the student cannot see (the modality gap), so distillation has little to transfer.")
    elif lab < 1.0:
        note += (" The teacher knows more than the baseline through the student's own modality, and it labels the "
                 f"{_pct(1 - lab)} of training rows that have no label: that is where distillation can pay.")
    return note


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None where matplotlib is not installed
    (the runtime-only install): reports then say the plots were skipped."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install matplotlib)"


def _series_label(r: dict) -> str:
    return f"{r['model']} ({r['format']}, {r['backend']})"


def plot_latency(report: dict, out: Path) -> Path | None:
    """p50 latency (with p90 whiskers) and throughput against batch, one column per thread count."""
    plt = _pyplot()
    rows = [r for r in report.get("latency", []) if "p50_ms" in r]
    if plt is None or not rows:
        return None
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(2, len(threads), figsize=(5.2 * len(threads), 7.2), squeeze=False, sharex=True)
    labels = sorted({_series_label(r) for r in rows})
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    for col, t in enumerate(threads):
        lat_ax, thr_ax = axes[0][col], axes[1][col]
        for label in labels:
            pts = sorted((r["batch"], r["p50_ms"], r["p90_ms"], r["throughput"]) for r in rows
                         if r["threads"] == t and _series_label(r) == label)
            if not pts:
                continue
            b, p50, p90, thr = (list(v) for v in zip(*pts, strict=True))
            up = [hi - lo for lo, hi in zip(p50, p90, strict=True)]
            lat_ax.errorbar(b, p50, yerr=[[0] * len(b), up], marker="o",
                            capsize=2, label=label, color=colors[label])
            thr_ax.plot(b, thr, marker="o", label=label, color=colors[label])
        lat_ax.set(xscale="log", yscale="log", ylabel="latency per call, p50 (ms; bar to p90)",
                   title=f"{t} CPU thread(s)")
        thr_ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="throughput (samples/s)")
        for ax in (lat_ax, thr_ax):
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("latency and throughput vs batch (same run, models interleaved)")
    fig.tight_layout()
    return _save(fig, out / "latency_vs_batch.png")


def tradeoff_points(report: dict) -> list[tuple[str, float, float]]:
    """(label, p50 ms at batch 1 on the fewest CPU threads measured, test accuracy) for the
    teacher, the student and each export, on every backend each was measured on."""
    lat = [r for r in report.get("latency", []) if "p50_ms" in r and r["batch"] == 1]
    if not lat:
        return []
    fewest = min(r["threads"] for r in lat)
    metrics = report.get("metrics", {})
    exports = report.get("exports", {})
    points = []
    for r in lat:
        if r["threads"] != fewest and r.get("device", "cpu") == "cpu":
            continue
        if r["format"] == "pytorch" and r["model"] in metrics:
            acc = metrics[r["model"]]["accuracy"]
        elif r["model"] == "student" and (exports.get(r["format"]) or {}).get("parity"):
            acc = exports[r["format"]]["parity"]["accuracy"]
        else:
            continue
        points.append((f"{r['model']} ({r['format']}, {r['backend']})", r["p50_ms"], acc))
    return points


def plot_tradeoff(report: dict, out: Path) -> Path | None:
    """Accuracy vs p50 latency at batch 1: teacher, student, each export format."""
    plt = _pyplot()
    points = tradeoff_points(report)
    if plt is None or not points:
        return None
    fewest = min(r["threads"] for r in report["latency"] if "p50_ms" in r and r["batch"] == 1)
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for i, (label, x, y) in enumerate(points):
        ax.scatter(x, 100 * y, s=55, color=plt.get_cmap("tab10")(i % 10), marker="os^DvP*X"[i % 8], label=label)
    xs = [x for _, x, _ in points]
    ax.set(xscale="log", xlim=(min(xs) / 1.8, max(xs) * 1.8),
           xlabel=f"p50 latency, batch 1, {fewest} CPU thread(s) (ms, log scale)", ylabel="test accuracy (%)",
           title="accuracy vs latency (up and left is better)")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out / "accuracy_vs_latency.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def make_plots(report: dict, out: Path) -> tuple[list[Path], str]:
    """The plots this report has data for, and a note when none could be drawn."""
    if _pyplot() is None:
        return [], PLOTS_SKIPPED
    plots = [p for p in (plot_latency(report, out), plot_tradeoff(report, out)) if p]
    return plots, ""


def _sizes(ds: dict) -> str:
    """{'train': 3500, ...} -> 'train 3,500 / val 500 / test 1,000 rows'."""
    sizes = ds.get("sizes") or {}
    return " / ".join(f"{k} {v:,}" for k, v in sizes.items()) + " rows" if sizes else "sizes unknown"


def render_markdown(report: dict, plots: list[Path], note: str = "") -> str:
    ds = report.get("dataset", {})
    parts = ["# distill-export report", ""]
    if ds:
        parts.append(
            f"Dataset **{ds.get('name')}**: {_sizes(ds)}, {ds.get('labeled_train_rows')} labeled training rows."
            # Only the built-in demo holds voices out (data/avdigits.py records them).
            + (" Test audio voices are never seen in training." if ds.get("test_voices") else "")
        )
    parts += ["", "## Accuracy (test split)", "", _md_table(["model", "accuracy", "macro F1", "macro precision", "macro recall"], accuracy_rows(report)), ""]
    if "kd_gain" in report:
        parts += [f"**kd_gain** = student − baseline = {100 * report['kd_gain']:+.2f} points. {kd_verdict(report)}", ""]
        parts += [_modality_gap_note(report), ""]
    if teacher_fusion_line(report):
        parts += [teacher_fusion_line(report), ""]
    probe = report.get("teacher", {}).get("modality_probe")
    if probe:
        parts += ["Teacher accuracy with one modality zeroed (the modality gap): "
                  + ", ".join(f"{k}: {_pct(v)}" for k, v in probe.items()), ""]
    if parity_rows(report):
        parts += ["## Exports and parity (vs the PyTorch student)", "",
                  _md_table(["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"], parity_rows(report)), ""]
    if report.get("latency"):
        parts += ["## Latency", "", profile_context(report), "", _md_table(LATENCY_HEADER, latency_table(report)), "",
                  "All rows: [latency.csv](latency.csv). Page with tables and plots: [report.html](report.html).", ""]
        if headline_speedups(report):
            parts += ["**Like for like** (student vs teacher on the same runtime; the cross-runtime ratios below, "
                      "marked 'no', mix the runtime's gain with the student's):", ""]
            parts += [f"- {line}" for line in headline_speedups(report)] + [""]
        if speedup_table(report, batch=1):
            parts += ["Speedups at batch 1 (p50 of the reference / p50 of the model, same run and cell):", "",
                      _md_table(SPEEDUP_HEADER, speedup_table(report, batch=1)), ""]
    if recommendation_lines(report):
        parts += ["## Recommended artifact per target", "",
                  "The fastest export that passed every parity gate, never one slower than the FP32 ONNX "
                  "(artifacts within 5% of the fastest count as tied; the smaller accuracy drop wins):", ""]
        parts += [f"- {line}" for line in recommendation_lines(report)] + [""]
    for p in plots:
        parts += [f"[![{p.stem}](plots/{p.name})](plots/{p.name})", ""]
    if note:
        parts += [f"_{note}_", ""]
    if report.get("timings"):
        parts += ["## Timings (s)", "", ", ".join(f"{k}: {v:.1f}" for k, v in report["timings"].items()), ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict, plots: list[Path], note: str = "") -> str:
    """Self-contained page: no scripts, no fonts, no network fetches; plots by relative path."""
    esc = html.escape
    ds = report.get("dataset", {})
    sections = ["<h1>distill-export report</h1>"]
    if ds:
        sections.append(f"<p>Dataset <b>{esc(str(ds.get('name')))}</b>: {esc(_sizes(ds))}, "
                        f"{esc(str(ds.get('labeled_train_rows')))} labeled training rows.</p>")
    if accuracy_rows(report):
        sections += ["<h2>Accuracy (test split)</h2>",
                     _html_table(["model", "accuracy", "macro F1", "macro precision", "macro recall"], accuracy_rows(report))]
    if "kd_gain" in report:
        sections.append(f"<p><b>kd_gain</b> = {100 * report['kd_gain']:+.2f} points. {esc(kd_verdict(report))}</p>")
        sections.append(f"<p>{esc(_modality_gap_note(report))}</p>")
    if teacher_fusion_line(report):
        sections.append(f"<p>{esc(teacher_fusion_line(report))}</p>")
    probe = report.get("teacher", {}).get("modality_probe")
    if probe:
        sections.append("<p>Teacher accuracy with one modality zeroed (the modality gap): "
                        + esc(", ".join(f"{k}: {_pct(v)}" for k, v in probe.items())) + "</p>")
    if parity_rows(report):
        header = ["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"]
        sections += ["<h2>Exports and parity (vs the PyTorch student)</h2>", _html_table(header, parity_rows(report))]
    if plots or note:
        sections.append("<h2>Plots</h2>")
    for p in plots:
        sections.append(f'<figure><a href="plots/{esc(p.name)}"><img src="plots/{esc(p.name)}" alt="{esc(p.stem)}"></a>'
                        f"<figcaption>{esc(p.stem.replace('_', ' '))}</figcaption></figure>")
    if note:
        sections.append(f"<p><i>{esc(note)}</i></p>")
    if report.get("latency"):
        sections += ["<h2>Latency</h2>", f"<p>{esc(profile_context(report))}</p>"]
        if headline_speedups(report):
            sections += ["<h3>Like for like (student vs teacher on the same runtime)</h3>",
                         "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in headline_speedups(report)) + "</ul>"]
        if recommendation_lines(report):
            sections += ["<h3>Recommended artifact per target</h3>",
                         "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in recommendation_lines(report)) + "</ul>"]
        if speedup_table(report):
            sections += ["<h3>Speedups (p50 of the reference / p50 of the model, same run and cell)</h3>",
                         _html_table(SPEEDUP_HEADER, speedup_table(report))]
        sections += ["<h3>All rows</h3>", _html_table(LATENCY_HEADER, latency_table(report)),
                     '<p>As CSV: <a href="latency.csv">latency.csv</a>.</p>']
    if report.get("timings"):
        sections += ["<h2>Timings (s)</h2>",
                     f"<p>{esc(', '.join(f'{k}: {v:.1f}' for k, v in report['timings'].items()))}</p>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>distill-export report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")


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
    plots, note = make_plots(report, run.file("plots"))
    write_latency_csv(report, run.file("latency.csv"))
    write_text(run.file("report.md"), render_markdown(report, plots, note))
    write_text(run.file("report.html"), render_html(report, plots, note))


def write_profile_outputs(out: Path, rows: list[dict], speedups: list[dict], meta: dict) -> list[Path]:
    """`profile --out DIR` on files: profile.json, latency.csv, a latency plot and profile.html."""
    from distill_export.files import write_json

    report = {"latency": rows, "speedups": speedups, "profile": meta}
    write_json(out / "profile.json", report)
    write_latency_csv(report, out / "latency.csv")
    plot = plot_latency(report, out / "plots")
    note = PLOTS_SKIPPED if _pyplot() is None else ""
    write_text(out / "profile.html", render_html(report, [plot] if plot else [], note))
    return [out / "profile.json", out / "latency.csv", out / "profile.html"] + ([plot] if plot else [])


# ----- terminal summaries -----------------------------------------------------------------


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


def print_parity(report: dict, console) -> None:
    rows = parity_rows(report)
    if rows:
        header = ["format", "precision", "size", "max abs diff", "top-1 agreement", "accuracy", "gates"]
        console.print(_rich_table("Parity vs the PyTorch student", header, rows))


def print_latency(report: dict, console) -> None:
    """Measured rows as a table (report.md/html add mean ± std), skipped ones as lines."""
    lat = report.get("latency", [])
    rows = [[r["model"], r["format"], r["backend"], str(r["batch"]), str(r["threads"]), f"{r['p50_ms']:.3f}",
             f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['throughput']:.0f}"] for r in lat if "p50_ms" in r]
    if rows:
        header = ["model", "format", "backend", "batch", "thr", "p50 ms", "p90 ms", "p99 ms", "samples/s"]
        console.print(_rich_table("Latency", header, rows))
    for r in lat:
        if "skipped" in r:
            where = f" at batch {r['batch']}, {r['threads']} thread(s)" if r.get("batch") is not None else ""
            console.print(f"skipped {r['model']} ({r['format']}) on {r['backend']}{where}: {r['skipped']}", highlight=False)
    if speedup_table(report, batch=1):
        console.print(_rich_table("Speedups at batch 1 (p50, same run)", SPEEDUP_HEADER, speedup_table(report, batch=1)))
    if profile_context(report):
        console.print(profile_context(report), highlight=False)


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Accuracy, parity and p50 at batch 1 per model/format/backend; speedup on the fewest threads."""
    lat: dict[tuple, dict[int, float]] = {}
    for r in report.get("latency", []):
        if "p50_ms" in r and r["batch"] == 1:
            lat.setdefault((r["model"], r["format"]), {}).setdefault(r["backend"], {})[r["threads"]] = r["p50_ms"]
    threads = sorted({t for by_backend in lat.values() for v in by_backend.values() for t in v})
    speed = {(s["model"], s["format"], s["backend"]): _speedup(s) for s in report.get("speedups", [])
             if s["batch"] == 1 and threads and s["threads"] == threads[0] and like_for_like(s)}
    metrics = report.get("metrics", {})
    exports = report.get("exports", {})
    entries = [(m, "pytorch", _pct(metrics[m]["accuracy"]), "-") for m in ("teacher", "baseline", "self_training", "student")
               if m in metrics]
    t_onnx = (report.get("teacher_exports") or {}).get("onnx") or {}
    if t_onnx.get("parity"):  # the teacher's own ONNX: its accuracy, and parity vs the PyTorch teacher
        entries.insert(1, ("teacher", "onnx", _pct(t_onnx["parity"]["accuracy"]),
                           "PASS" if t_onnx["parity"]["passed"] else "FAIL"))
    for fmt, art in exports.items():
        p = art.get("parity") or {}
        entries.append(("student", fmt, _pct(p.get("accuracy")) if p else "-",
                        ("PASS" if p.get("passed") else "FAIL") if p else "-"))
    listed = {(m, f) for m, f, _, _ in entries}
    entries += [(m, f, "-", "-") for (m, f) in lat if (m, f) not in listed]  # profiled files without metrics
    rows = []
    for model, fmt, acc, parity in entries:
        for backend, p50 in (lat.get((model, fmt)) or {"-": {}}).items():
            sp = speed.get((model, fmt, backend))
            short = backend.replace("onnxruntime", "ort")  # keeps the table within 80 columns
            rows.append([model, fmt, short, acc, parity, *[f"{p50[t]:.3f}" if t in p50 else "-" for t in threads],
                         f"×{sp:.1f}" if sp else "-"])
    header = ["model", "format", "backend", "acc.", "parity", *[f"p50 ms b1 {t}t" for t in threads],
              f"faster b1 {threads[0]}t" if threads else "faster"]
    return header, rows


def print_summary(report: dict, console) -> None:
    """After `run`: accuracy, parity and p50 latency per model/format, and the speedups."""
    header, rows = summary_rows(report)
    console.print(_rich_table("Summary (test split; latency at batch 1, same run)", header, rows, keep_whole=3))
    print_deployment(report, console)
    if "kd_gain" in report:
        console.print(f"kd_gain: {100 * report['kd_gain']:+.2f} points. {kd_verdict(report)}")
    from rich.markup import escape

    # One line per backend and reason (e.g. OpenVINO not installed: the teacher's and the student's ONNX)
    skipped: dict[tuple[str, str], list[str]] = {}
    for r in report.get("latency", []):
        if "skipped" in r and r.get("batch") is None:
            skipped.setdefault((r["backend"], r["skipped"]), []).append(f"{r['model']} ({r['format']})")
    for (backend, reason), models in skipped.items():  # escaped: "[openvino]" in a reason is not markup
        console.print(escape(f"not profiled: {', '.join(models)} on {backend}: {reason}"), highlight=False)


def print_deployment(report: dict, console) -> None:
    """The like-for-like speedups (student vs teacher, same runtime) and the recommended
    artifact per profiled target."""
    for line in headline_speedups(report):
        console.print(line, highlight=False)
    for line in recommendation_lines(report):
        console.print(line, highlight=False)


def recommendation_lines(report: dict) -> list[str]:
    """One line per target of report.json `recommended` (see recommend.py)."""
    lines = []
    for target, rec in (report.get("recommended") or {}).items():
        if not rec.get("format"):
            lines.append(f"recommended for {target}: none ({rec.get('reason', 'no artifact qualifies')})")
            continue
        vs_fp32 = rec.get("speedup_vs_fp32_onnx")
        vs_teacher = rec.get("speedup_vs_teacher")
        facts = [f"p50 {rec['p50_ms']:.3f} ms at batch {rec['batch']}",
                 f"accuracy drop {100 * rec['accuracy_drop']:+.2f} points" if rec.get("accuracy_drop") is not None else "",
                 f"×{vs_fp32:.2f} vs student FP32 ONNX" if vs_fp32 else "",
                 f"×{vs_teacher:.1f} vs {rec['teacher_reference']}" if vs_teacher else
                 f"no teacher on {rec['backend']} ({rec.get('teacher_missing', 'not measured')})"]
        lines.append(f"recommended for {target}: {rec['format']} on {rec['backend']} ({rec.get('path', '')}): "
                     + ", ".join(f for f in facts if f))
    return lines
