"""PNG plots under plots/: latency and throughput vs batch, accuracy vs latency, and the
training curves (loss and validation score per epoch) the record holds."""

from __future__ import annotations

from pathlib import Path

from distill_export.files import atomic_path
from distill_export.record import RunRecord
from distill_export.record.models import Training
from distill_export.report.view import task_view
from distill_export.record.format import reads_record

PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install matplotlib)"


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


def _series_label(r) -> str:
    return f"{r.model} ({r.format}, {r.backend})"


@reads_record
def plot_latency(record: RunRecord, out: Path) -> Path | None:
    """p50 latency (with p90 whiskers) and throughput against batch, one column per thread count."""
    plt = _pyplot()
    rows = [r for r in record.latency if r.measured]
    if plt is None or not rows:
        return None
    threads = sorted({r.threads for r in rows})
    fig, axes = plt.subplots(2, len(threads), figsize=(5.2 * len(threads), 7.2), squeeze=False, sharex=True)
    labels = sorted({_series_label(r) for r in rows})
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    for col, t in enumerate(threads):
        lat_ax, thr_ax = axes[0][col], axes[1][col]
        for label in labels:
            pts = sorted((r.batch, r.p50_ms, r.p90_ms, r.throughput) for r in rows
                         if r.threads == t and _series_label(r) == label)
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


@reads_record
def tradeoff_points(record: RunRecord) -> list[tuple[str, float, float]]:
    """(label, p50 ms at batch 1 on the fewest CPU threads measured, test score) for the
    teacher, the student and each export, on every backend each was measured on."""
    lat = [r for r in record.latency if r.measured and r.batch == 1]
    if not lat:
        return []
    fewest = min(r.threads for r in lat)
    points = []
    view = task_view(record)
    for r in lat:
        if r.threads != fewest and r.device == "cpu":
            continue
        score = view.model_score(record, r.model, r.format)
        if score is not None:
            points.append((f"{r.model} ({r.format}, {r.backend})", r.p50_ms, score))
    return points


@reads_record
def plot_tradeoff(record: RunRecord, out: Path) -> Path | None:
    """Test score vs p50 latency at batch 1: teacher, student, each export format."""
    plt = _pyplot()
    points = tradeoff_points(record)
    if plt is None or not points:
        return None
    fewest = min(r.threads for r in record.latency if r.measured and r.batch == 1)
    from matplotlib.ticker import NullFormatter

    score = task_view(record).SCORE_LABEL  # "test accuracy (%)", "test mAP50 (%)": the title's words too (66th A4)
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for i, (label, x, y) in enumerate(points):
        ax.scatter(x, 100 * y, s=55, color=plt.get_cmap("tab10")(i % 10), marker="os^DvP*X"[i % 8], label=label)
    xs = [x for _, x, _ in points]
    ax.set(xscale="log", xlim=(min(xs) / 1.8, max(xs) * 1.8),
           xlabel=f"p50 latency, batch 1, {fewest} CPU thread(s) (ms, log scale)", ylabel=score,
           title=f"{score.removeprefix('test ').removesuffix(' (%)')} vs latency (up and left is better)")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out / "accuracy_vs_latency.png")


def training_histories(record: RunRecord) -> dict[str, Training]:
    """The trainings with a per-epoch history: teacher, student, baseline, self-training control."""
    d = record.distill
    control = d.self_training_control if d else None
    found = {
        "teacher": record.teacher.training if record.teacher else None,
        "student": d.student_training if d else None,
        "baseline": d.baseline_training if d else None,
        "control (student)": control.student_training if control else None,
    }
    return {name: t for name, t in found.items() if t is not None and t.history}


@reads_record
def plot_training(record: RunRecord, out: Path) -> Path | None:
    """Training loss and validation score per epoch, one line per training; the best epoch
    (the weights kept) is marked."""
    plt = _pyplot()
    histories = training_histories(record)
    if plt is None or not histories:
        return None
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for i, (name, training) in enumerate(histories.items()):
        color = plt.get_cmap("tab10")(i % 10)
        epochs = [e.epoch for e in training.history]
        loss_ax.plot(epochs, [e.train_loss for e in training.history], marker=".", color=color, label=name)
        scored = [(e.epoch, 100 * e.val_accuracy) for e in training.history if e.val_accuracy is not None]
        if scored:
            val_ax.plot(*zip(*scored, strict=True), marker=".", color=color, label=name)
            best = next((v for ep, v in scored if ep == training.best_epoch), None)
            if best is not None:
                val_ax.scatter([training.best_epoch], [best], s=60, facecolors="none", edgecolors=[color])
    loss_ax.set(xlabel="epoch", ylabel="training loss (mean over the epoch)",
                title="training loss (each training's own objective)")
    val_label = task_view(record).VAL_SCORE_LABEL
    val_ax.set(xlabel="epoch", ylabel=f"{val_label} (%)", title=f"{val_label} (circle: the epoch kept)")
    for ax in (loss_ax, val_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out / "training_curves.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


@reads_record
def make_plots(record: RunRecord, out: Path) -> tuple[list[Path], str]:
    """The plots this report has data for, and a note when none could be drawn."""
    if _pyplot() is None:
        return [], PLOTS_SKIPPED
    import warnings

    with warnings.catch_warnings():  # matplotlib's UserWarning and its source line are not the user's to read
        warnings.simplefilter("ignore")  # (sixth audit RP_R5); a plot it could not draw well is still drawn
        plots = [p for p in (plot_latency(record, out), plot_tradeoff(record, out), plot_training(record, out)) if p]
    plots += [out / name for name in record.figures.values() if (out / name).is_file()]  # drawn by a stage
    gone = [name for name in record.figures.values() if not (out / name).is_file()]
    # a figure only a stage draws, deleted since, was left out in silence (fifty-fourth audit A7)
    return plots, (f"figure{'s' * (len(gone) > 1)} {', '.join(f'plots/{n}' for n in gone)} (drawn by the distill "
                   "stage) missing from the run folder, so left out; `distill-export distill RUN` draws "
                   f"{'them' if len(gone) > 1 else 'it'} again" if gone else "")
