"""Rows and lines shared by report.md, report.html and the terminal: latency, speedups, the
profiling context, recommendations. They read the typed run record (record/models.py)."""

from __future__ import annotations

from distill_export.record import RunRecord
from distill_export.record.format import reads_record
from distill_export.record.models import Dataset, Speedup


def _opt(v) -> str:
    return "-" if v is None else str(v)


LATENCY_HEADER = ["model", "format", "backend", "batch", "threads", "mean ± std ms", "p50 ms", "p90 ms", "p99 ms",
                  "CPU ms/call p50", "samples/s"]
SPEEDUP_HEADER = ["model", "format", "backend", "batch", "threads", "speedup (p50)", "speedup (CPU time)", "vs",
                  "same runtime"]


@reads_record
def latency_table(record: RunRecord) -> list[list[str]]:
    """Measured rows, then one line per skipped model/backend with its reason."""
    rows, skipped = [], []
    for r in record.latency:
        if r.skipped is not None:
            skipped.append([r.model, r.format, r.backend, _opt(r.batch), _opt(r.threads),
                            "skipped: " + r.skipped, "", "", "", "", ""])
            continue
        rows.append([
            r.model, r.format, r.backend, str(r.batch), str(r.threads),
            f"{r.mean_ms:.3f} ± {r.std_ms:.3f}", f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}", f"{r.cpu_p50_ms:.3f}" if r.cpu_p50_ms is not None else "-", f"{r.throughput:.0f}",
        ])
    return rows + skipped


def like_for_like(s: Speedup) -> bool:
    """Whether a speedup compares the two models on the same runtime (record/migrate.py fills
    it in for files written before it was recorded)."""
    return s.like_for_like


@reads_record
def speedup_table(record: RunRecord, batch: int | None = None) -> list[list[str]]:
    rows = []
    for s in record.speedups:
        if batch is None or s.batch == batch:
            rows.append([s.model, s.format, s.backend, str(s.batch), str(s.threads),
                         f"×{s.speedup:.2f}", f"×{s.cpu_speedup:.2f}" if s.cpu_speedup is not None else "-",
                         s.reference, "yes" if s.like_for_like else "no (runtimes differ)"])
    return rows


@reads_record
def headline_speedups(record: RunRecord, batch: int = 1) -> list[str]:
    """Student vs teacher on the same runtime, one line per backend at `batch` on the fewest
    threads measured (and one per GPU backend); a backend the teacher did not run on says why."""
    lat = [r for r in record.latency if r.measured and r.batch == batch]
    if not lat:
        return []
    cpu_threads = [r.threads for r in lat if r.device == "cpu"]
    fewest = min(cpu_threads) if cpu_threads else None
    cells = {(r.backend, r.threads) for r in lat if r.model == "student" and (r.device != "cpu" or r.threads == fewest)}
    why_not = {r.backend: r.skipped for r in record.latency if r.model == "teacher" and r.skipped is not None}
    lines = []
    for backend, threads in sorted(cells):
        found = [s for s in record.speedups if s.like_for_like and s.model == "student"
                 and s.backend == backend and s.batch == batch and s.threads == threads]
        where = f"{backend}, batch {batch}, {threads} thread(s)"
        if found:
            parts = ", ".join(f"×{s.speedup:.1f} ({s.format})" for s in found)
            lines.append(f"student vs teacher on the same runtime ({where}): {parts}")
        else:
            reason = why_not.get(backend, "the teacher was not measured on this runtime")
            lines.append(f"student vs teacher on the same runtime ({where}): no teacher row: {reason}")
    return lines


@reads_record
def profile_context(record: RunRecord) -> str:
    """One line: where and how the latency rows were measured."""
    meta = record.profile
    if not given(meta):
        return ""
    m, v, st = meta.machine, meta.versions, meta.settings
    cores = m.usable_cores if m.usable_cores is not None else m.cores if m.cores is not None else "?"
    load = f", load {m.load_average_1m}" if m.load_average_1m is not None else ""
    parts = [f"{m.cpu if m.cpu is not None else '?'} ({cores} cores{load})"]
    parts.append(", ".join(f"{k} {v[k]}" for k in ("python", "torch", "onnxruntime", "tensorrt") if k in v))
    if given(st):
        parts.append(f"warm-up {st.warmup_s} s, then at least {st.min_iters} calls and "
                     f"{st.min_time_s} s per model and cell, interleaved; latency is wall time per call, "
                     "'CPU ms/call' (one thread) the calling thread's CPU time, which other processes cannot inflate")
    if meta.peak_rss_mb is not None:
        parts.append(f"peak RSS {meta.peak_rss_mb:.0f} MiB")
    parts += meta.notes
    return "; ".join(p for p in parts if p) + "."


def given(section) -> bool:
    """A section that is in the file and not empty."""
    return section is not None and bool(section.model_fields_set or section.model_extra)


def dataset_sizes(ds: Dataset) -> str:
    """{'train': 3500, ...} -> 'train 3,500 / val 500 / test 1,000 rows'."""
    return " / ".join(f"{k} {v:,}" for k, v in ds.sizes.items()) + " rows" if ds.sizes else "sizes unknown"


@reads_record
def recommendation_lines(record: RunRecord) -> list[str]:
    """One line per target of report.json `recommended` (see recommend.py)."""
    lines = []
    for target, rec in record.recommended.items():
        if not rec.format:
            lines.append(f"recommended for {target}: none ({rec.reason or 'no artifact qualifies'})")
            continue
        vs_fp32, vs_teacher = rec.speedup_vs_fp32_onnx, rec.speedup_vs_teacher
        facts = [f"p50 {rec.p50_ms:.3f} ms at batch {rec.batch}",
                 f"accuracy drop {100 * rec.accuracy_drop:+.2f} points" if rec.accuracy_drop is not None else "",
                 f"×{vs_fp32:.2f} vs student FP32 ONNX" if vs_fp32 else "",
                 f"×{vs_teacher:.1f} vs {rec.teacher_reference}" if vs_teacher else
                 f"no teacher on {rec.backend} ({rec.teacher_missing or 'not measured'})"]
        lines.append(f"recommended for {target}: {rec.format} on {rec.backend} ({rec.path or ''}): "
                     + ", ".join(f for f in facts if f))
    return lines
