"""Benchmark of the profiler itself, against the issue's targets:

  * profiling the demo run (teacher, student, student ONNX FP32 and INT8 when exported;
    batch 1-32; 1 and 2 threads) takes <= 60 s;
  * two repeated sessions agree within 10% on medians (p50), row by row;
  * the student/teacher speedup at batch 1 on 1 thread is >= 3x (each student format).

    python tools/bench_profile.py [RUN_DIR] [--repeats 2] [--batch 1,8,32] [--threads 1,2]

Without RUN_DIR it builds the demo once (distill-export run --format onnx,onnx-int8) into
bench-results/profile-demo/ and reuses it. Prints the machine, versions and shapes, and
writes bench-results/profile/bench_profile.{json,csv}. Absolute numbers depend on the
machine and on what else runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS, TARGET_AGREEMENT, TARGET_SPEEDUP = 60.0, 0.10, 3.0
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, int_list, one_line_errors  # noqa: E402


def ensure_demo(path: Path) -> Path:
    if (path / "report.json").is_file() and "exports" in json.loads((path / "report.json").read_text()):
        return path
    print(f"building the demo run in {path} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "distill_export.cli", "run", "--out", str(path),
                    "--format", "onnx,onnx-int8", "--quiet"], check=True)
    return path


def key(r: dict) -> tuple:
    return (r["model"], r["format"], r["backend"], r["batch"], r["threads"])


@one_line_errors
def main() -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--repeats", type=at_least(1), default=2)
    ap.add_argument("--batch", type=int_list(1), default="1,8,32")
    ap.add_argument("--threads", type=int_list(0), default="1,2", help="0 = torch's choice")
    ap.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    args = ap.parse_args()
    from distill_export.output_paths import check_tool_output

    from distill_export.rundir import RunDir

    if args.run_dir is not None:  # a missing run is named first, not --out (47th audit B1)
        RunDir.existing(args.run_dir)
    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work

    from distill_export.config import ProfileConfig
    from distill_export.errors import ConfigError
    from distill_export.profiling import make_settings, profile_targets
    from distill_export.profiling.session import machine_info, versions

    try:  # the profiler's own checks (the sweep's limits), before the demo run is built
        settings = make_settings(ProfileConfig(), batches=[int(b) for b in args.batch.split(",")],
                                 threads=[int(t) for t in args.threads.split(",")], device="cpu")
    except ConfigError as exc:
        ap.error(str(exc).splitlines()[0])
    run_dir = args.run_dir or ensure_demo(Path("bench-results/profile-demo"))
    run = RunDir.existing(run_dir)
    with run.lock():  # a distill running there is "in use", not "unfinished ... next: distill" (60th audit B2)
        # the checks `distill-export profile RUN` makes: a student.pt replaced after distill was timed beside the
        # distilled student's export, and speedups drawn between them (58th audit B5)
        run.require_stages(("distill", "export"), "bench_profile")
        run.require_unchanged_artifacts("bench_profile")
    print("machine:", json.dumps(machine_info()))
    print("versions:", json.dumps(versions()))
    exports = run.load_report().get("exports", {})
    print(f"run: {run.path}; exports: {', '.join(exports) or 'none'}; batches {settings.sweep.batches}, "
          f"threads {settings.sweep.threads}; warm-up {settings.sweep.warmup_s} s, min {settings.sweep.min_time_s} s "
          f"and {settings.sweep.min_iters} calls per model and cell")

    sessions = []
    with run.lock():  # a distill running in the run would make stale the files timed here (58th audit B16)
        for i in range(args.repeats):
            start = time.perf_counter()
            result = profile_targets([run.path], settings)
            wall = time.perf_counter() - start
            sessions.append({"wall_s": wall, "load_average_1m": os.getloadavg()[0], "rows": result.rows,
                             "speedups": result.speedups})
            shapes = sorted({(r["model"], r["format"]) for r in result.rows if "p50_ms" in r})
            print(f"session {i + 1}: {wall:.1f} s (target <= {TARGET_SECONDS:.0f} s), load {os.getloadavg()[0]:.1f}, "
                  f"{len(result.rows)} rows for {shapes}")

    # Agreement of medians between the first two sessions, row by row (wall p50; and the
    # per-call CPU time p50 on one thread, which other processes' load does not inflate).
    agreement = []
    if len(sessions) >= 2:
        a = {key(r): r for r in sessions[0]["rows"] if "p50_ms" in r}
        b = {key(r): r for r in sessions[1]["rows"] if "p50_ms" in r}
        for k in sorted(set(a) & set(b), key=str):
            x, y = a[k]["p50_ms"], b[k]["p50_ms"]
            g = {"model": k[0], "format": k[1], "backend": k[2], "batch": k[3], "threads": k[4],
                 "p50_ms_1": x, "p50_ms_2": y, "rel_diff": max(x, y) / min(x, y) - 1}
            if "cpu_p50_ms" in a[k] and "cpu_p50_ms" in b[k]:
                cx, cy = a[k]["cpu_p50_ms"], b[k]["cpu_p50_ms"]
                g |= {"cpu_p50_ms_1": cx, "cpu_p50_ms_2": cy, "cpu_rel_diff": max(cx, cy) / min(cx, cy) - 1}
            agreement.append(g)
    first = min(settings.sweep.batches)  # the smallest batch swept: `--batch 8` printed a batch-1 heading, empty (A3)
    speed = [s for s in sessions[0]["speedups"] if s["batch"] == first and s["threads"] == min(settings.sweep.threads)]
    # Ratios measured within one session cancel load that changes between sessions.
    ratio_agreement = []
    if len(sessions) >= 2:
        skey = lambda s: (s["model"], s["format"], s["backend"], s["batch"], s["threads"], s["reference"])  # noqa: E731
        a = {skey(s): s["speedup"] for s in sessions[0]["speedups"]}
        b = {skey(s): s["speedup"] for s in sessions[1]["speedups"]}
        ratio_agreement = [{"key": list(k), "speedup_1": a[k], "speedup_2": b[k],
                            "rel_diff": max(a[k], b[k]) / min(a[k], b[k]) - 1} for k in sorted(set(a) & set(b), key=str)]

    if len(sessions) < 2:  # a "sessions 1 and 2" heading over 0/0 rows with --repeats 1 (59th audit A3)
        print("\n--repeats 1: one session, no agreement between sessions measured")
    else:
        print("\nmedian agreement between sessions 1 and 2 (max/min - 1):")
    for g in agreement:
        flag = "ok " if g["rel_diff"] <= TARGET_AGREEMENT else "OFF"
        print(f"  {flag} {g['model']:8s} {g['format']:10s} {g['backend']:16s} b{g['batch']:<4d} {g['threads']}t "
              f"{g['p50_ms_1']:9.3f} ms {g['p50_ms_2']:9.3f} ms  {100 * g['rel_diff']:5.1f}%"
              + (f"   cpu {g['cpu_p50_ms_1']:8.3f} {g['cpu_p50_ms_2']:8.3f} ms {100 * g['cpu_rel_diff']:5.1f}%"
                 if "cpu_rel_diff" in g else ""))
    within = sum(g["rel_diff"] <= TARGET_AGREEMENT for g in agreement)
    if len(sessions) >= 2:
        print(f"  {within}/{len(agreement)} rows within {100 * TARGET_AGREEMENT:.0f}% (wall p50)")
    cpu_rows = [g for g in agreement if "cpu_rel_diff" in g]
    if cpu_rows:
        print(f"  {sum(g['cpu_rel_diff'] <= TARGET_AGREEMENT for g in cpu_rows)}/{len(cpu_rows)} one-thread rows "
              f"within {100 * TARGET_AGREEMENT:.0f}% on CPU time per call")
    if ratio_agreement:
        ok = sum(g["rel_diff"] <= TARGET_AGREEMENT for g in ratio_agreement)
        print(f"  speedup ratios (same-session): {ok}/{len(ratio_agreement)} within {100 * TARGET_AGREEMENT:.0f}% "
              f"between sessions; 1-thread rows: "
              f"{sum(g['rel_diff'] <= TARGET_AGREEMENT for g in agreement if g['threads'] == 1)}/"
              f"{sum(g['threads'] == 1 for g in agreement)} medians within {100 * TARGET_AGREEMENT:.0f}%")
    # each line names its reference: like for like (the teacher on the same runtime) or the teacher on PyTorch
    # eager; two lines for one export looked alike with different numbers (58th audit B6)
    print(f"\nspeedup vs the teacher at batch {first}, {min(settings.sweep.threads)} thread, session 1:")
    for s in speed:
        flag = "ok " if s["speedup"] >= TARGET_SPEEDUP else "LOW"
        cpu = f" (CPU time: x{s['cpu_speedup']:.2f})" if "cpu_speedup" in s else ""
        print(f"  {flag} {s['model']} {s['format']:10s} {s['backend']:16s} x{s['speedup']:.2f}{cpu} vs {s['reference']}")
    walls = [s["wall_s"] for s in sessions]
    print(f"\nwall per session: {', '.join(f'{w:.1f} s' for w in walls)} (target <= {TARGET_SECONDS:.0f} s)")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine_info(), "versions": versions(), "run_dir": str(run.path),
               "settings": settings.to_dict(), "sessions": sessions, "agreement": agreement, "speedup_agreement": ratio_agreement,
               "speedups_first_batch": {"batch": first, "rows": speed},
               "targets": {"seconds": TARGET_SECONDS, "agreement": TARGET_AGREEMENT, "speedup": TARGET_SPEEDUP}}
    (args.out / "bench_profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(args.out / "bench_profile.csv", "w", newline="") as f:
        rows = [{"session": i + 1, **r} for i, s in enumerate(sessions) for r in s["rows"]]
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {args.out / 'bench_profile.json'}, {args.out / 'bench_profile.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
