"""Benchmark the teacher-output cache: distillation epochs with the teacher's outputs read
from the cache vs. the teacher run on every batch (what training without a cache, or with
augmentation, costs), for teachers of growing cost relative to the student.

    python tools/bench_cache.py --widths 8 16 32 --rows 2000 --repeats 3 --out bench-results/cache

For each teacher width it measures, interleaved in one run (A B A B ...):
  * forward cost per row of teacher and student (their ratio is "teacher_cost_x"),
  * one distillation epoch (distill.train_student, including its validation pass) with
    cached outputs and with the teacher online; the ratio is "epoch_speedup_x",
  * the cache's one-off costs: computing the outputs once, saving, and loading (a hit).
Teachers are randomly initialised: only their cost matters here. Writes JSON and CSV.

    python tools/bench_cache.py --rss-rows 10000 40000 --out bench-results/cache

instead measures the cache's memory: for each row count, a fresh process writes synthetic teacher
outputs (1280 features + 1000 logits per row, float32, as a mobilenet-size teacher on ImageNet
classes would give) batch by batch, reads them back (a hit) and gathers one epoch of random
batches of 64 rows. It prints the peak RSS of each and the ratio between the largest and smallest
row count (1.0 = memory does not grow with rows; the cache files themselves grow linearly).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, named_once, one_line_errors  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_cost(fn, inputs, rows: int, repeats: int) -> float:
    """Seconds per row of a no-grad forward pass, batch 64, best of `repeats`."""
    from distill_export.train import predict

    return min(timed(lambda: predict(fn, inputs, rows, batch_size=64)) for _ in range(repeats)) / rows


RSS_CHILD = """
import resource, sys, tempfile, torch
from pathlib import Path
from distill_export.teacher_cache import CacheKey, cached_outputs
rows, feat_dim, classes = int(sys.argv[1]), 1280, 1000
def batches():
    g = torch.Generator().manual_seed(0)
    for start in range(0, rows, 512):
        n = min(512, rows - start)
        yield torch.randn(n, feat_dim, generator=g), torch.randn(n, classes, generator=g)
with tempfile.TemporaryDirectory() as tmp:
    key = CacheKey("bench", str(rows), "bench")
    cached_outputs(Path(tmp) / "c", key, rows, batches)  # miss: write
    peak_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    feats, logits, info = cached_outputs(Path(tmp) / "c", key, rows, batches)  # hit: read
    assert info["status"] == "hit"
    total = 0.0
    for idx in torch.randperm(rows).split(64):  # one epoch of batch gathers
        total += float(logits[idx].sum() + feats[idx].sum())
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Rss"))
    kib = lambda k: int(status[k].split()[0])
    # KiB: peak RSS after the write, at the end; RSS now, its anonymous and its file-backed parts
    print(peak_write, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, kib("RssAnon"), kib("RssFile"))
"""


def rss_scaling(rows_list: list[int], out: Path) -> None:
    import subprocess

    results = []
    for rows in rows_list:
        done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(rows)], capture_output=True, text=True,
                              cwd=REPO, check=True)
        write_peak, peak, anon, file = (int(v) / 1024 for v in done.stdout.split()[-4:])
        results.append({"rows": rows, "cache_mib": round(rows * (1280 + 1000) * 4 / 2**20, 1),
                        "peak_rss_after_write_mib": round(write_peak, 1), "peak_rss_mib": round(peak, 1),
                        "rss_anon_end_mib": round(anon, 1), "rss_file_end_mib": round(file, 1)})
        print(json.dumps(results[-1]), flush=True)
    first, last = results[0], results[-1]
    ratios = {k: last[k] / first[k] for k in ("peak_rss_after_write_mib", "peak_rss_mib", "rss_anon_end_mib")}
    print(f"{last['rows']} / {first['rows']} rows: write-phase peak RSS x{ratios['peak_rss_after_write_mib']:.2f}, "
          f"anonymous RSS x{ratios['rss_anon_end_mib']:.2f}; overall peak RSS x{ratios['peak_rss_mib']:.2f} "
          "(it counts the file pages the epoch touched, which the kernel can drop)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cache_rss.json").write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="avdigits", help="data (and student) from this recipe")
    ap.add_argument("--data", default=None, help="a manifest instead of the recipe's data")
    ap.add_argument("--widths", type=at_least(1), nargs="+", default=[8, 16, 32], help="teacher widths to try")
    ap.add_argument("--rows", type=at_least(0), default=2000, help="training rows used (0 = all)")
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--threads", type=at_least(1), default=1)
    ap.add_argument("--out", default="bench-results/cache")
    ap.add_argument("--rss-rows", type=at_least(1), nargs="+", default=None,
                    help="measure peak memory of the cache at these row counts instead")
    args = ap.parse_args()
    named_once(ap, args, "rss_rows", "widths")
    if args.rss_rows:  # that mode reads none of the others: they were accepted and ignored (58th audit B15)
        given = [f"--{k.replace('_', '-')}" for k in ("recipe", "data", "widths", "rows", "repeats", "threads")
                 if getattr(args, k) != ap.get_default(k)]
        if given:
            ap.error(f"{', '.join(given)} do not apply with --rss-rows (it measures the cache's own arrays): drop them")
    sys.path.insert(0, str(REPO))
    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work
    if args.rss_rows:
        return rss_scaling(sorted(args.rss_rows), Path(args.out))

    sys.path.insert(0, str(REPO))
    from distill_export.config import load_config
    from distill_export.data import load_dataset
    from distill_export.distill import train_student
    from distill_export.nets.model_io import new_student
    from distill_export.nets.teacher import FusionTeacher
    from distill_export.teacher_cache import CacheKey, load, save
    from distill_export.train import predict
    from distill_export.train_teacher import teacher_kwargs

    torch.set_num_threads(args.threads)
    overrides = {"distill.epochs": 1}
    if args.data:
        overrides["data.source"] = args.data
    from distill_export.errors import DistillExportError

    try:
        cfg = load_config(args.recipe, None, overrides)
    except DistillExportError as exc:  # e.g. an unknown --recipe: one line, not a traceback
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    data = load_dataset(cfg.data, cfg.seed)
    if args.rows and args.rows < len(data.train):
        data.train = data.train.subset(torch.arange(args.rows))
    n = len(data.train)
    device = torch.device("cpu")
    inputs = data.train.inputs
    modality = cfg.data.student_modality
    student = new_student(cfg, data).eval()
    header = (f"{platform.node()} {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
              f"{args.threads} thread(s); data {data.name}: {n} train rows, inputs "
              + ", ".join(f"{m} {tuple(s.shape)}" for m, s in data.modalities.items())
              + f"; student {cfg.student.name} on {modality}, batch {cfg.distill.batch_size}")
    print(header, flush=True)

    results = []
    for width in args.widths:
        torch.manual_seed(0)
        teacher = FusionTeacher(**teacher_kwargs(data, width, 0.0)).eval()
        t_row = forward_cost(teacher.forward_features, inputs, n, args.repeats)
        s_row = forward_cost(student.forward_features, inputs[modality], n, args.repeats)

        compute_s = timed(lambda: predict(teacher.forward_features, inputs, n))
        feats, logits = predict(teacher.forward_features, inputs, n)
        key = CacheKey("bench", f"w{width}", "bench")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher_outputs"
            save_s = timed(lambda: save(path, key, {"features": feats, "logits": logits}))
            load_s = timed(lambda: load(path, key, n))

        @torch.no_grad()
        def online(rows, x_student, mix=None):
            """train_student's online teacher (teacher_cache.teacher_targets): the teacher on the
            student's batch, the other modalities mixed the same way."""
            batch = {m: v[rows] for m, v in inputs.items()}
            if mix is not None:
                batch = {m: mix.apply(v) for m, v in batch.items()}
            batch[modality] = x_student
            return teacher.forward_features(batch)

        cached_times, online_times = [], []
        if not results:  # warm-up: the first training call pays one-off allocation costs
            train_student(cfg, data, logits, feats, device, quiet=True)
        for _ in range(args.repeats):  # interleaved: A B A B ...
            cached_times.append(timed(lambda: train_student(cfg, data, logits, feats, device, quiet=True)))
            online_times.append(timed(lambda: train_student(cfg, data, None, feats, device, quiet=True,
                                                            online_teacher=online)))
        row = {
            "teacher_width": width,
            "teacher_ms_per_row": 1e3 * t_row, "student_ms_per_row": 1e3 * s_row,
            "teacher_cost_x": t_row / s_row,
            "epoch_cached_s": statistics.median(cached_times), "epoch_online_s": statistics.median(online_times),
            "epoch_speedup_x": statistics.median(online_times) / statistics.median(cached_times),
            "cache_compute_s": compute_s, "cache_save_s": save_s, "cache_load_s": load_s,
            "cache_bytes": (feats.numel() + logits.numel()) * 4,
        }
        results.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    lines = [header, "", "| teacher width | teacher cost (x student, fwd/row) | epoch cached (s) | epoch online (s) | "
             "epoch speedup | cache: compute / save / load (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['teacher_width']} | {r['teacher_cost_x']:.1f}x | {r['epoch_cached_s']:.2f} | "
                     f"{r['epoch_online_s']:.2f} | {r['epoch_speedup_x']:.2f}x | {r['cache_compute_s']:.2f} / "
                     f"{r['cache_save_s']:.3f} / {r['cache_load_s']:.3f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cache.json").write_text(json.dumps({"header": header, "results": results}, indent=2))
    with open(out / "bench_cache.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    (out / "bench_cache.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
