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
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("onnx", "onnx-fp16", "onnx-int8")
OV = "/openvino"  # suffix of the OpenVINO rows
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, positive, one_line_errors  # noqa: E402


def openvino_sessions(paths: dict[str, str], threads: int, batch: int | None = None) -> dict:
    """{"<key>/openvino": session} per ONNX file when OpenVINO is installed, else {} (rows skipped)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {}
    from distill_export.runtimes.openvino_cpu import openvino_session

    return {f"{k}{OV}": openvino_session(p, threads, batch) for k, p in paths.items()}


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

    try:
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "not installed (pip install distill-export[openvino]): no OpenVINO rows"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "openvino": ov_version,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def student_from_run(run_dir: Path):
    """(model, meta, sha256, x_test, labels, calibration) from an existing run directory."""
    from distill_export.data import load_dataset
    from distill_export.nets.model_io import load_student
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


# ----- --size: every registry student at real input size (random weights) --------------------

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
OPT_LEVELS = ("disable", "basic", "extended", "all")


def stock_student(name: str, num_classes: int = 10, size: int = 224):
    """A registry student for SxSx3 input: from 64 px up the registry keeps torchvision's stock
    stem (stride 2, and the maxpool); tiny_cnn is the registry's own (it takes any size)."""
    from distill_export.nets.students import create_student, student_names

    if name not in student_names():
        print(f"error: unknown student {name!r} (choices: {', '.join(student_names())})", file=sys.stderr)
        raise SystemExit(2)
    return create_student(name, num_classes, in_channels=3, input_size=size)


def check_size(name: str, size: int) -> None:
    """A --size the student cannot take: one line and exit 2."""
    import torch

    try:
        with torch.inference_mode():
            stock_student(name).eval()(torch.zeros(1, 3, size, size))
    except RuntimeError as exc:
        print(f"error: student {name} cannot take {size}x{size}x3 input: {str(exc).splitlines()[0][:160]}", file=sys.stderr)
        raise SystemExit(2) from None


def mnist_images(size: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first n MNIST test images resized to size x size, replicated to 3 channels and
    normalised with MNIST's mean/std; None when ../shared/data/mnist is absent."""
    import gzip

    import torch
    import torch.nn.functional as F

    img, lab = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        return None
    with gzip.open(img) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(lab) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    t = torch.from_numpy(x.astype(np.float32) / 255.0)
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    t = ((t - 0.1307) / 0.3081).expand(-1, 3, -1, -1)
    return np.ascontiguousarray(t.numpy(), dtype=np.float32), y.astype(np.int64)


def recalibrate_bn(model, x: np.ndarray, batch: int = 32) -> None:
    """Random init leaves BatchNorm at mean 0 / var 1 whatever the activations are; one pass in
    train mode over real images sets running statistics that fit them, so activation ranges
    (what INT8 calibrates) look like a trained net's rather than exploding or vanishing."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(torch.from_numpy(x[i:i + batch]))
    model.eval()


def fit_head(model, x: np.ndarray, y: np.ndarray | None, batch: int = 32) -> float | None:
    """Random weights give logits with tiny margins, where any rounding flips the top-1 and
    agreement means little. Fit the classifier head (ridge regression of one-hot labels on
    the random backbone's features) on the calibration rows, as a linear probe: the logits
    then separate classes as a trained net's do. Returns the probe's train accuracy."""
    import torch

    if y is None:
        return None
    with torch.no_grad():
        feats = torch.cat([model.backbone(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])
    f = feats.double()
    mu = f.mean(0)
    z = f - mu  # centred, not scaled: dividing by a dead feature's ~0 std would blow its weight up
    target = torch.nn.functional.one_hot(torch.from_numpy(y), 10).double() * 10.0  # margins like a trained net's
    ridge = float(len(f)) * float(z.var(0).mean())  # strong enough that 256 rows do not memorise the features
    w = torch.linalg.solve(z.T @ z + ridge * torch.eye(z.shape[1], dtype=f.dtype), z.T @ (target - target.mean(0)))
    head = model.head
    with torch.no_grad():  # logits = (f - mu) @ W + mean target, folded into the Linear
        head.weight.copy_(w.T.float())
        head.bias.copy_((target.mean(0) - mu @ w).float())
        acc = float((model.head(feats).argmax(1).numpy() == y).mean())
    return acc


def ort_session(path: str, threads: int, opt_level: str = "all"):
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[opt_level]
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict, x: np.ndarray, batch: int, seconds: float, rounds: int) -> dict:
    """Like interleaved_p50, with at least one call per model and round (a batch of 32 at 224
    can take seconds) and the round order rotated so no model always goes first."""
    name = next(iter(sessions.values())).get_inputs()[0].name
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=np.float32)
    keys = list(sessions)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, {name: xb})
    for r in range(rounds):
        for i in range(len(keys)):
            k = keys[(i + r) % len(keys)]
            deadline = time.perf_counter() + seconds / rounds
            while True:
                t0 = time.perf_counter()
                sessions[k].run(None, {name: xb})
                samples[k].append(time.perf_counter() - t0)
                if time.perf_counter() >= deadline:
                    break
    return {k: {"p50_ms": 1e3 * statistics.median(v), "calls": len(v)} for k, v in samples.items()}


def bench_size(args) -> None:
    """Every student at --size: FP32/FP16/INT8 (and --int8-recipes, --opt-levels) on ORT CPU,
    --threads, interleaved per batch; size on disk; INT8 top-1 agreement with FP32 on MNIST."""
    import torch

    from distill_export.export import ExportOptions, ExportSource, export_formats
    from distill_export.export.common import quantize_qdq
    from distill_export.export.int8_recipes import INT8_RECIPES, recipe_for
    from distill_export.nets.students import student_names

    students = args.students or student_names()
    for name in students:
        check_size(name, args.size)
    for r in args.int8_recipes:
        if r not in INT8_RECIPES:
            raise SystemExit(f"unknown INT8 recipe {r!r} (choices: {', '.join(INT8_RECIPES)})")
    check_before_work(args)
    size = args.size
    real = mnist_images(size, args.calibration_rows + args.agreement_rows)
    if real is None:
        rng = np.random.default_rng(0)
        cal_x = rng.standard_normal((args.calibration_rows, 3, size, size)).astype(np.float32)
        agree_x = cal_y = agree_y = None
        print(f"no MNIST at {MNIST}: calibrating on random normal images, agreement skipped")
    else:
        cal_x, agree_x = real[0][:args.calibration_rows], real[0][args.calibration_rows:]
        cal_y, agree_y = real[1][:args.calibration_rows], real[1][args.calibration_rows:]
    info = machine()
    import os

    info["uptime"] = os.popen("uptime").read().strip()
    print(f"machine: {info['cpu']} ({info['cores']} cores); {info['uptime']}")
    print(f"torch {info['torch']}, onnx {info['onnx']}, onnxruntime {info['onnxruntime']}, openvino {info['openvino']}; "
          f"input (B, 3, {size}, {size}); ORT CPU (and OpenVINO CPU, f32), {args.threads} thread(s); batches {args.batches}; {args.seconds} s per model and batch in "
          f"{args.rounds} interleaved rounds; random weights, BatchNorm statistics from {len(cal_x)} "
          f"{'MNIST' if real is not None else 'random'} images")
    results = []
    for name in students:
        torch.manual_seed(args.seed)
        model = stock_student(name)
        recalibrate_bn(model, cal_x)
        probe_acc = fit_head(model, cal_x, cal_y)
        meta = {"class_names": [str(i) for i in range(10)], "input_name": "x", "input_shape": [3, size, size],
                "norm_mean": [0.1307] * 3, "norm_std": [0.3081] * 3, "student": name, "teacher": "none"}
        with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
            options = ExportOptions(calibration_samples=len(cal_x), calibration_batch=16)
            source = ExportSource(model, meta, "0" * 64, Path(work), calibration=cal_x)
            exported = export_formats(source, list(FORMATS), options)
            paths = {f: exported[f].path for f in FORMATS}
            default = recipe_for("auto", name).name
            labels = {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": f"int8:{default}"}
            paths = {labels[f]: p for f, p in paths.items()}
            for r in args.int8_recipes:
                if f"int8:{r}" in paths:
                    continue
                out = Path(work) / f"int8-{r}.onnx"
                try:
                    quantize_qdq(Path(paths["fp32"]), out, cal_x, options, recipe=INT8_RECIPES[r])
                    paths[f"int8:{r}"] = str(out)
                except Exception as exc:  # noqa: BLE001 - a recipe the quantizer refuses: say so, go on
                    print(f"{name}: recipe {r} failed: {str(exc).splitlines()[0][:160]}")
            sessions = {k: ort_session(p, args.threads) for k, p in paths.items()}
            ov_paths = {k: paths[k] for k in ("fp32", "fp16", labels["onnx-int8"])}
            sessions.update(openvino_sessions(ov_paths, args.threads))  # dynamic batch: agreement rows
            for level in args.opt_levels:
                for k in [k for k in paths if k.startswith("int8:") or k == "fp32"]:
                    sessions[f"{k}@{level}"] = ort_session(paths[k], args.threads, level)
            sizes = {k: os.path.getsize(paths[k.split("@")[0].removesuffix(OV)]) for k in sessions}
            agreement, rel_err = {}, {}
            if agree_x is not None:
                ref = None
                for k, s in sessions.items():
                    if "@" in k:
                        continue
                    logits = np.concatenate([s.run(None, {"x": agree_x[i:i + 32]})[0]
                                             for i in range(0, len(agree_x), 32)])
                    if ref is None:
                        ref = logits  # fp32 is first
                        fp32_acc = float((logits.argmax(1) == agree_y).mean())
                    agreement[k] = float((logits.argmax(1) == ref.argmax(1)).mean())
                    # margin-free: mean |logit error| relative to the FP32 logits' mean magnitude
                    rel_err[k] = float(np.abs(logits - ref).mean() / np.abs(ref).mean())
            x = cal_x
            lat = {}
            for b in args.batches:
                chosen = sessions if b == min(args.batches) else {k: s for k, s in sessions.items()
                                                                  if "@" not in k and k.removesuffix(OV) in ov_paths}
                chosen = {**chosen, **openvino_sessions({k: ov_paths[k] for k in ov_paths if k + OV in chosen},
                                                        args.threads, b)}  # static batch b: OpenVINO's fast path
                lat[b] = interleaved(chosen, x, b, args.seconds, args.rounds)
        probe = ("" if agree_x is None else f"; random backbone + fitted head: {100 * probe_acc:.0f}% on its "
                 f"{len(cal_x)} fit rows, FP32 {100 * fp32_acc:.1f}% on the {len(agree_x)} agreement rows")
        print(f"\n{name} at {size}x{size}x3 ({exported['onnx'].details['exporter']} exporter); "
              f"default INT8 recipe: {default}{probe}")
        print(f"{'format':<30} {'size KiB':>9} {'agree':>7} {'rel err':>7}" + "".join(f" {f'p50 ms b{b}':>11} {f'vs fp32 b{b}':>11}" for b in args.batches))
        for k in sessions:
            line = (f"{k:<30} {sizes[k] / 1024:>9.0f} {(f'{100 * agreement[k]:.1f}%' if k in agreement else '-'):>7}"
                    f" {(f'{100 * rel_err[k]:.1f}%' if k in rel_err else '-'):>7}")
            row = {"student": name, "format": k, "size_bytes": sizes[k], "top1_agreement_vs_fp32": agreement.get(k),
                   "relative_logit_error_vs_fp32": rel_err.get(k),
                   "fp32_accuracy": fp32_acc if agree_x is not None else None}
            for b in args.batches:
                if k in lat[b]:
                    p50 = lat[b][k]["p50_ms"]
                    fp32 = lat[b]["fp32" + (OV if k.endswith(OV) else "")]["p50_ms"]  # FP32 on the same runtime
                    line += f" {p50:>11.3f} {fp32 / p50:>10.2f}x"
                    row[f"p50_ms_b{b}"] = p50
                    row[f"speedup_vs_fp32_b{b}"] = fp32 / p50
                    row[f"calls_b{b}"] = lat[b][k]["calls"]
                else:
                    line += f" {'-':>11} {'-':>11}"
            print(line)
            results.append(row)
    info["uptime_after"] = os.popen("uptime").read().strip()
    print(f"\n{info['uptime_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": info, "size": size, "threads": args.threads, "batches": args.batches, "seconds": args.seconds,
        "rounds": args.rounds, "agreement_rows": 0 if agree_x is None else len(agree_x),
        "calibration_rows": len(cal_x), "int8_recipes": args.int8_recipes, "opt_levels": args.opt_levels,
        "rows": results,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


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
    ap.add_argument("--calibration-method", default="minmax")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", type=int, help="every registry student at SIZExSIZEx3, random weights (stock stems)")
    ap.add_argument("--students", nargs="+", help="with --size: these students only (default: every registry name)")
    ap.add_argument("--int8-recipes", nargs="*", default=[], help="with --size: extra INT8 recipes to measure "
                    "(int8_recipes.INT8_RECIPES), interleaved at the smallest batch")
    ap.add_argument("--opt-levels", nargs="*", default=[], choices=OPT_LEVELS,
                    help="with --size: also run FP32 and each INT8 model at these ORT graph optimisation levels")
    ap.add_argument("--calibration-rows", type=at_least(1), default=256,
                    help="with --size: MNIST rows for BN statistics, the fitted head and INT8 calibration")
    ap.add_argument("--agreement-rows", type=at_least(1), default=500, help="with --size: MNIST rows for INT8 vs FP32 top-1 agreement")
    args = ap.parse_args()
    if args.size:
        if args.size < 8:
            print(f"error: --size must be at least 8, got {args.size}", file=sys.stderr)
            raise SystemExit(2)
        return bench_size(args)
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
          f"calibration {args.calibration_method}, {options.calibration_samples} rows")
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
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
