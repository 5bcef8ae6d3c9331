"""Benchmark the export suite in one run: export time, INT8/FP16 vs FP32 ONNX speed on CPU,
and the accuracy each format keeps.

What it measures, for one student (a run directory's student.pt, or a student trained
here on the demo's labels for --epochs):

- export time of every CPU format (onnx, onnx-fp16, onnx-int8), in this process;
- p50 latency on ONNX Runtime CPU, 1 intra-op thread, batch 1 and 32, the formats
  interleaved in rounds (A B C A B C ...) so machine drift hits them alike; the ratios
  are of medians from that one run;
- test accuracy of each format and its drop vs the FP32 ONNX.

Prints the machine, versions and shapes with the table; writes JSON. Examples:

    python tools/bench_export.py --run runs/demo
    python tools/bench_export.py --student mobilenet_v3_small --epochs 2 --out bench-results/export-mnv3.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("onnx", "onnx-fp16", "onnx-int8")


def machine() -> dict:
    import onnx
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def student_from_run(run_dir: Path):
    """(model, meta, sha256, x_test, labels, calibration) from an existing run directory."""
    from distill_export.config import config_from_dict  # noqa: F401 (run dirs are ours)
    from distill_export.data import load_dataset
    from distill_export.distill import load_student
    from distill_export.files import sha256_file
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_dir)
    cfg = run.load_config()
    model, meta = load_student(run.require("student.pt", "distill"))
    data = load_dataset(cfg.data, cfg.seed)
    mod = cfg.data.student_modality
    return (model, meta, sha256_file(run.file("student.pt")), data.test.inputs[mod].numpy(),
            data.test.labels.numpy(), data.train.inputs[mod].numpy())


def student_trained_here(name: str, epochs: int, seed: int):
    """Train `name` on the demo's labels (the labels-only baseline recipe) for `epochs`."""
    import torch

    from distill_export.config import load_config
    from distill_export.data import load_dataset
    from distill_export.distill import student_meta, train_baseline

    cfg = load_config("avdigits", None, {"student.name": name, "distill.epochs": epochs, "seed": seed})
    data = load_dataset(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    model, _ = train_baseline(cfg, data, torch.device("cpu"), quiet=True)
    print(f"trained {name} for {epochs} epochs in {time.perf_counter() - t0:.1f} s")
    meta = {**student_meta(cfg, data, "none (labels only)"), "student": name}
    mod = cfg.data.student_modality
    return (model.eval(), meta, "0" * 64, data.test.inputs[mod].numpy(), data.test.labels.numpy(),
            data.train.inputs[mod].numpy())


def interleaved_p50(sessions: dict, x: np.ndarray, batch: int, seconds: float, rounds: int) -> dict:
    """p50 latency (ms) per session; each round runs every session for seconds/rounds."""
    name = next(iter(sessions.values())).get_inputs()[0].name
    xb = np.ascontiguousarray(x[:batch], dtype=np.float32)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(20):
            s.run(None, {name: xb})
    for _ in range(rounds):
        for k, s in sessions.items():
            deadline = time.perf_counter() + seconds / rounds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                s.run(None, {name: xb})
                samples[k].append(time.perf_counter() - t0)
    return {k: {"p50_ms": 1e3 * statistics.median(v), "calls": len(v)} for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run directory with student.pt (default: train one here)")
    ap.add_argument("--student", default="tiny_cnn", help="student to train when --run is not given")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs when --run is not given")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per format and batch")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calibration-method", default="minmax")
    ap.add_argument("--out", type=Path, default=Path("bench-results/export.json"))
    args = ap.parse_args()

    from distill_export.export import ExportOptions, ExportSource, export_formats
    from distill_export.metrics import classification_metrics
    from distill_export.runtimes import onnx_session, run_onnx

    if args.run:
        model, meta, sha, x_test, labels, train_x = student_from_run(args.run)
    else:
        model, meta, sha, x_test, labels, train_x = student_trained_here(args.student, args.epochs, args.seed)
    info = machine()
    options = ExportOptions(calibration_method=args.calibration_method)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        source = ExportSource(model, meta, sha, Path(work), calibration=train_x[: options.calibration_samples])
        t0 = time.perf_counter()
        results = export_formats(source, list(FORMATS), options)
        export_total = time.perf_counter() - t0
        sessions = {f: onnx_session(results[f].path, args.threads) for f in FORMATS}
        sizes = {f: results[f].size_bytes for f in FORMATS}
        accuracy = {
            f: classification_metrics(run_onnx(s, x_test, 64), labels, len(meta["class_names"]))["accuracy"]
            for f, s in sessions.items()
        }
        latency = {b: interleaved_p50(sessions, x_test, b, args.seconds, args.rounds) for b in args.batches}

    shape = f"(B, {', '.join(map(str, meta['input_shape']))})"
    print(f"\nmachine: {info['cpu']} ({info['cores']} cores, load {info['load_avg_1m']:.1f}); "
          f"torch {info['torch']}, onnx {info['onnx']}, onnxruntime {info['onnxruntime']}")
    print(f"student: {meta.get('student')} input {shape}; ORT CPU, {args.threads} thread(s); "
          f"calibration {args.calibration_method}, {options.calibration_samples} rows")
    print(f"export time, all CPU formats: {export_total:.2f} s "
          f"({', '.join(f'{f} {results[f].seconds:.2f}' for f in FORMATS)}; exporter {results['onnx'].details['exporter']})")
    header = f"{'format':<10} {'size KiB':>9} {'accuracy':>9} {'drop pts':>9}"
    for b in args.batches:
        header += f" {f'p50 ms b{b}':>11} {f'vs fp32 b{b}':>11}"
    print(header)
    rows = []
    for f in FORMATS:
        drop = 100 * (accuracy["onnx"] - accuracy[f])
        line = f"{f:<10} {sizes[f] / 1024:>9.1f} {100 * accuracy[f]:>8.2f}% {drop:>9.2f}"
        row = {"format": f, "size_bytes": sizes[f], "accuracy": accuracy[f], "accuracy_drop_points": drop,
               "export_seconds": results[f].seconds}
        for b in args.batches:
            p50 = latency[b][f]["p50_ms"]
            speedup = latency[b]["onnx"]["p50_ms"] / p50
            line += f" {p50:>11.4f} {speedup:>10.2f}x"
            row[f"p50_ms_b{b}"] = p50
            row[f"speedup_vs_fp32_b{b}"] = speedup
            row[f"calls_b{b}"] = latency[b][f]["calls"]
        print(line)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": info, "student": meta.get("student"), "input_shape": ["B", *meta["input_shape"]],
        "threads": args.threads, "batches": args.batches, "export_seconds_total": export_total,
        "exporter": results["onnx"].details["exporter"], "calibration_method": args.calibration_method,
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
