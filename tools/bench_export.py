"""Benchmark the export suite in one run: export time, INT8/FP16 vs FP32 ONNX speed on CPU,
and the accuracy each format keeps.

What it measures, for one student (a run directory's student.pt, or a student trained
here on the demo's labels for --epochs):

- export time of every CPU format (onnx, onnx-fp16, onnx-int8), in this process;
- p50 latency on ONNX Runtime CPU, 1 intra-op thread, batch 1 and 32, the formats
  interleaved in rounds (A B C A B C ...) so machine drift hits them alike; the ratios
  are of medians from that one run;
- test accuracy of each format and its drop vs the FP32 ONNX;
- with the openvino extra installed (pip install distill-export[openvino]), the same ONNX
  files on OpenVINO's CPU plugin too (rows "<format>/openvino", f32 precision, a static-batch
  model per batch for latency), interleaved with the ONNX Runtime rows.

Prints the machine, versions and shapes with the table; writes JSON. Examples:

    python tools/bench_export.py --run runs/demo
    python tools/bench_export.py --student mobilenet_v3_small --epochs 2 --out bench-results/export-mnv3.json
    python tools/bench_export.py --size 224 --out bench-results/export-224.json    # every student, 224x224x3
    python tools/bench_export.py --size 224 --students mobilenet_v3_small --batches 1 \
        --int8-recipes qdq qdq-conv qoperator --opt-levels basic     # INT8 recipes side by side
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ helpers, also when loaded by path
from toolargs import Parser, at_least, named_once, positive, one_line_errors  # noqa: E402
from bench_export_common import FORMATS, OV, machine, openvino_sessions  # noqa: E402
import bench_export_size  # noqa: E402


def student_from_run(run_dir: Path):
    """(model, meta, sha256, x_test, labels, calibration) from an existing run directory."""
    from distill_export.data import load_dataset
    from distill_export.nets.model_io import load_student
    from distill_export.files import sha256_file
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_dir)
    with run.lock():  # a distill running there is "in use", not "unfinished ... next: distill" (60th audit B2)
        # student.pt as distill made it (a baseline.pt copied over it was benchmarked as the student: 58th B16)
        run.require_stages(("distill",), "bench_export")
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
    from distill_export.distill import train_baseline
    from distill_export.nets.model_io import student_meta

    cfg = load_config("avdigits", None, {"student.name": name, "distill.epochs": epochs, "seed": seed})
    data = load_dataset(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    model, _ = train_baseline(cfg, data, torch.device("cpu"), quiet=True)
    print(f"trained {name} for {epochs} epochs in {time.perf_counter() - t0:.1f} s")
    meta = {**student_meta(cfg, data, "none (labels only)", {"class_names": data.target_names}), "student": name}
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


DEFAULT_OUT = Path("bench-results/export.json")


def check_before_work(args) -> None:
    """--out is a new file outside any run; --run is a classification run directory, or (no --run)
    the student trained here is one the config accepts. A bad value is a DistillExportError, one
    line and exit 2 through main's one_line_errors, before any training, loading or export."""
    from distill_export.errors import ConfigError
    from distill_export.output_paths import check_tool_output
    from distill_export.rundir import RunDir

    if args.run:  # the run named first: a missing one is the problem, not --out (47th audit B1)
        RunDir.existing(args.run)
    if args.out == DEFAULT_OUT:  # the default's folder is the tool's to make (it was refused as missing)
        DEFAULT_OUT.parent.mkdir(parents=True, exist_ok=True)
    check_tool_output(args.out, folder=False)
    if args.run:  # twentieth audit B5: a detection run was loaded as classification, then an IndexError
        task = RunDir.existing(args.run).load_config().task
        if task != "classification":
            raise ConfigError(f"{args.run} is a {task} run; bench_export measures classification students")
    else:
        from distill_export.config import load_config

        load_config("avdigits", None, {"student.name": args.student, "distill.epochs": args.epochs, "seed": args.seed})


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run directory with student.pt (default: train one here)")
    ap.add_argument("--student", default="tiny_cnn", help="student to train when --run is not given")
    ap.add_argument("--epochs", type=at_least(1), default=4, help="training epochs when --run is not given")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=at_least(1), nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=at_least(1), default=1)
    ap.add_argument("--seconds", type=positive, default=3.0, help="timed seconds per format and batch")
    ap.add_argument("--rounds", type=at_least(1), default=6)
    from distill_export.export.base import CALIBRATION_METHODS

    ap.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)  # before training (59th B2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", type=int, help="every classification student of the registry at SIZExSIZEx3, random weights (stock stems)")
    ap.add_argument("--students", nargs="+", help="with --size: these students only (default: every classification student)")
    ap.add_argument("--int8-recipes", nargs="*", default=[], help="with --size: extra INT8 recipes to measure "
                    "(int8_recipes.INT8_RECIPES), interleaved at the smallest batch")
    ap.add_argument("--opt-levels", nargs="*", default=[], choices=bench_export_size.OPT_LEVELS,
                    help="with --size: also run FP32 and each INT8 model at these ORT graph optimisation levels")
    ap.add_argument("--calibration-rows", type=at_least(1), default=256,
                    help="with --size: MNIST rows for BN statistics, the fitted head and INT8 calibration")
    ap.add_argument("--agreement-rows", type=at_least(1), default=500, help="with --size: MNIST rows for INT8 vs FP32 top-1 agreement")
    args = ap.parse_args()
    from distill_export.export.int8_recipes import INT8_RECIPES

    # checked before any work, in both modes (58th audit B1-B3: exit 1 without `error:`, a KeyError traceback
    # after the exports, and --size 0 taken as no --size); a batch named twice was one column printed twice (A2)
    if bad := next((r for r in args.int8_recipes if r not in INT8_RECIPES), None):
        ap.error(f"argument --int8-recipes: unknown INT8 recipe {bad!r} (choices: {', '.join(INT8_RECIPES)})")
    named_once(ap, args, "batches", "students", "int8_recipes", "opt_levels")
    # each mode's own flags: the other mode's were accepted and ignored (58th audit B17)
    size_only = ("students", "opt_levels", "calibration_rows", "agreement_rows")
    others, mode = ((("run", "student", "epochs", "calibration_method"), "with --size") if args.size is not None else
                    ((*size_only, "student", "epochs", "seed"), "with --run (it measures the run's student)")
                    if args.run else (size_only, "without --size"))  # --run vs a student trained here: 59th B1
    if given := [f"--{k.replace('_', '-')}" for k in others if getattr(args, k) != ap.get_default(k)]:
        ap.error(f"{', '.join(given)} do{'es' * (len(given) == 1)} not apply {mode}: drop {'them' if len(given) > 1 else 'it'}")
    if args.size is not None:
        if args.size < 8:
            ap.error(f"--size must be at least 8, got {args.size}")
        return bench_export_size.bench_size(args, check_before_work)
    check_before_work(args)
    from distill_export.export import ExportOptions, ExportSource, export_formats
    from distill_export.tasks.classification.metrics import classification_metrics
    from distill_export.runtimes.onnx_runtime import onnx_session, run_onnx

    if args.run:
        model, meta, sha, x_test, labels, train_x = student_from_run(args.run)
    else:
        model, meta, sha, x_test, labels, train_x = student_trained_here(args.student, args.epochs, args.seed)
    info = machine()
    options = ExportOptions(calibration_method=args.calibration_method)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        source = ExportSource(model, meta, sha, Path(work), calibration=train_x[: options.calibration_samples],
                              task_meta={"class_names": meta["class_names"]})
        t0 = time.perf_counter()
        results = export_formats(source, list(FORMATS), options)
        export_total = time.perf_counter() - t0
        paths = {f: results[f].path for f in FORMATS}
        from distill_export.export.common import quantize_qdq
        from distill_export.export.int8_recipes import INT8_RECIPES

        for r in args.int8_recipes:  # the same FP32 model and calibration rows, another recipe
            out = Path(work) / f"int8-{r}.onnx"
            quantize_qdq(Path(paths["onnx"]), out, source.calibration, options, recipe=INT8_RECIPES[r])
            paths[f"int8:{r}"] = str(out)
        sessions = {f: onnx_session(p, args.threads) for f, p in paths.items()}
        sessions.update(openvino_sessions({f: paths[f] for f in FORMATS}, args.threads))  # dynamic batch: accuracy
        sizes = {f: Path(paths[f.removesuffix(OV)]).stat().st_size for f in sessions}
        logits = {f: run_onnx(s, x_test, 64) for f, s in sessions.items()}
        accuracy = {f: classification_metrics(v, labels, len(meta["class_names"]))["accuracy"] for f, v in logits.items()}
        agreement = {f: float((v.argmax(1) == logits["onnx"].argmax(1)).mean()) for f, v in logits.items()}
        latency = {b: interleaved_p50({**sessions, **openvino_sessions({f: paths[f] for f in FORMATS if f + OV in sessions},
                                                                      args.threads, b)},
                                      x_test, b, args.seconds, args.rounds) for b in args.batches}

    shape = f"(B, {', '.join(map(str, meta['input_shape']))})"
    print(f"\nmachine: {info['cpu']} ({info['cores']} cores, load {info['load_avg_1m']:.1f}); "
          f"torch {info['torch']}, onnx {info['onnx']}, onnxruntime {info['onnxruntime']}, openvino {info['openvino']}")
    print(f"student: {meta.get('student')} input {shape}; ORT CPU, {args.threads} thread(s); "
          f"calibration {args.calibration_method}, {len(source.calibration)} rows")
    print(f"export time, all CPU formats: {export_total:.2f} s "
          f"({', '.join(f'{f} {results[f].seconds:.2f}' for f in FORMATS)}; exporter {results['onnx'].details['exporter']})")
    header = f"{'format':<22} {'size KiB':>9} {'accuracy':>9} {'drop pts':>9} {'agree':>7}"
    for b in args.batches:
        header += f" {f'p50 ms b{b}':>11} {f'vs fp32 b{b}':>11}"
    print(header)
    rows = []
    for f in sessions:
        drop = 100 * (accuracy["onnx"] - accuracy[f])
        line = f"{f:<22} {sizes[f] / 1024:>9.1f} {100 * accuracy[f]:>8.2f}% {drop:>9.2f} {100 * agreement[f]:>6.1f}%"
        row = {"format": f, "size_bytes": sizes[f], "accuracy": accuracy[f], "accuracy_drop_points": drop,
               "top1_agreement_vs_fp32": agreement[f],
               **({"export_seconds": results[f].seconds} if f in results else {})}
        for b in args.batches:
            p50 = latency[b][f]["p50_ms"]
            speedup = latency[b]["onnx" + (OV if f.endswith(OV) else "")]["p50_ms"] / p50  # vs FP32, same runtime
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
        "calibration_rows": len(source.calibration),  # the training rows there are, up to calibration_samples (B4)
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
