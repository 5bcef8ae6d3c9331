"""tools/bench_export.py --size: every registry student at SIZExSIZEx3 input, random weights with
BatchNorm statistics and a fitted head from MNIST, FP32/FP16/INT8 (and extra INT8 recipes, ORT
optimisation levels) on ONNX Runtime CPU, interleaved per batch."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_export_common import FORMATS, OV, machine, openvino_sessions

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
OPT_LEVELS = ("disable", "basic", "extended", "all")


def stock_student(name: str, num_classes: int = 10, size: int = 224):
    """A registry student for SxSx3 input: from 64 px up the registry keeps torchvision's stock
    stem (stride 2, and the maxpool); tiny_cnn is the registry's own (it takes any size)."""
    from distill_export.nets.students import create_student, student_names

    # classification students: a detector has no classifier head to fit, and the default list reached one
    # after the others' work, an AttributeError traceback (61st audit B1)
    if name not in student_names("classification"):
        print(f"error: unknown student {name!r} (--size measures classification students: "
              f"{', '.join(student_names('classification'))})", file=sys.stderr)
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


def bench_size(args, check_before_work) -> None:
    """Every student at --size: FP32/FP16/INT8 (and --int8-recipes, --opt-levels) on ORT CPU,
    --threads, interleaved per batch; size on disk; INT8 top-1 agreement with FP32 on MNIST.
    check_before_work(args) checks --out once the students and recipes are known good."""
    import torch

    from distill_export.export import ExportOptions, ExportSource, export_formats
    from distill_export.export.common import quantize_qdq
    from distill_export.export.int8_recipes import INT8_RECIPES, recipe_for
    from distill_export.nets.students import student_names

    students = args.students or student_names("classification")
    for name in students:
        check_size(name, args.size)
    # the recipes: checked by bench_export.main before any work
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


if __name__ == "__main__":  # a part of bench_export.py: run alone it did nothing, exit 0 (58th audit A4)
    print("error: bench_export_size.py is the --size mode of tools/bench_export.py: run "
          "`python tools/bench_export.py --size N`", file=sys.stderr)
    raise SystemExit(2)
