#!/usr/bin/env python
"""Benchmark the KD loss (Hinton et al. 2015), forward + backward.

Implementations (all with T=4, α=0.5, labels with a few ignored rows):

  fused      distill_export.losses.kd_triton.kd_loss_fused (CUDA only)
  eager      PyTorch as most users write it: log_softmax + softmax + KLDivLoss(batchmean)
             + cross_entropy, in the input dtype
  reference  distill_export.losses.kd.kd_loss_reference (fp32 upcast, eager)
  compile    torch.compile(kd_loss_reference)
  liger      Liger-Kernel, if installed: LigerCrossEntropyLoss + LigerKLDIVLoss on
             log-softmaxed logits (its logit-level pieces; its chunked distillation
             losses take hidden states + lm_head weights, not logits)

Reported per (shape, dtype, impl): median fwd+bwd time between CUDA events around
one call (``median_ms``: the device's timeline, idle gaps included); the device time
alone (``device_ms``: the sum of the kernels' durations per call, from the
profiler); the Python call time (``call_ms``: host time per call, calls issued back
to back without a sync, so the host cost of checks, autograd and launches);
effective GB/s from the event time and from the device time, with
bytes = N·C·(bytes(s) + bytes(t) + bytes(grad)) (the minimum traffic of a fused
kernel, so every impl is scored against the same useful work); % of the device's
peak bandwidth (table below or --peak-gbps); peak memory above the inputs
(torch.cuda.max_memory_allocated delta) and that peak over the gradient's own size
(issue 22's target: ≤ 1); the loss difference from the reference (on fresh inputs:
Liger's cross-entropy writes its gradient over the logits); and the ratio to a
baseline impl, as the median of per-repetition ratios. The repetitions are
interleaved (A, B, C, A, B, C, … with a rotating start) so that clock and thermal
drift hit every impl alike; each impl has its own copy of the student logits.

On CPU (no CUDA) only reference vs compile run, at small shapes (about a minute
on 2 cores, most of it torch.compile). Results go to --out as CSV and JSON,
rewritten after every shape so an interrupted run keeps what it measured.

    python tools/bench_kd_loss.py                       # defaults for this machine
    python tools/bench_kd_loss.py --shapes 8192x32768 --dtypes bf16 --reps 50
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path

from distill_export.losses.kd import kd_loss_reference  # noqa: E402
from toolargs import Parser, at_least, choice_list, one_line_errors, positive, shape_list  # noqa: E402  (tools/toolargs.py)
from kd_loss_timing import bench_case, paired_ratios  # noqa: E402  (tools/kd_loss_timing.py)

TEMPERATURE = 4.0
ALPHA = 0.5
GPU_SHAPES = "8192x1000,8192x32768,4096x128256"
CPU_SHAPES = "256x1000,32x32768"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLS = ("fused", "eager", "reference", "compile", "liger")

# Vendor datasheet peak DRAM bandwidth, GB/s. Matched as a substring of
# torch.cuda.get_device_name(), longest key first; override with --peak-gbps.
PEAK_GBPS = {
    "GH200": 4000,
    "H200": 4800,
    "H100 NVL": 3900,
    "H100 PCIe": 2000,
    "H100": 3350,  # SXM
    "H800": 3350,
    "B200": 8000,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100": 1555,  # 40 GB parts
    "A10G": 600,
    "A10": 600,
    "L40S": 864,
    "L40": 864,
    "L4": 300,
    "RTX 4090": 1008,
    "RTX 3090": 936,
    "V100": 900,
    "T4": 320,
}


# --- the implementations under test --------------------------------------------------------


def eager_user_kd(s, t, y, temperature=TEMPERATURE, alpha=ALPHA):
    """What most training scripts write (in the logits' own dtype)."""
    soft = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    )
    hard = F.cross_entropy(s, y, ignore_index=-100)
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def reference_kd(s, t, y):
    return kd_loss_reference(s, t, y, TEMPERATURE, ALPHA, -100, "mean")


def build_impls(device: torch.device, wanted: list[str] | None) -> dict[str, Callable]:
    """name -> fn(s, t, y) returning a scalar loss; unavailable ones are skipped with a note."""
    on_cuda = device.type == "cuda"
    default = ["fused", "eager", "reference", "compile", "liger"] if on_cuda else ["reference", "compile"]
    names = wanted or default
    impls: dict[str, Callable] = {}
    for name in names:
        if name == "fused":
            if not on_cuda:
                print("skip fused: needs CUDA")
                continue
            from distill_export.losses.kd_triton import kd_loss_fused

            impls[name] = lambda s, t, y: kd_loss_fused(s, t, y, temperature=TEMPERATURE, alpha=ALPHA)
        elif name == "eager":
            impls[name] = eager_user_kd
        elif name == "reference":
            impls[name] = reference_kd
        elif name == "compile":
            impls[name] = torch.compile(reference_kd)
        elif name == "liger":
            try:  # optional dependency (tools/gpu_check.sh installs the carried wheel)
                from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
                from liger_kernel.transformers.kl_div import LigerKLDIVLoss
            except Exception as exc:  # noqa: BLE001 - not installed, or it does not import here
                print(f"skip liger: {type(exc).__name__}: {exc}"[:200])
                continue
            if not on_cuda:
                print("skip liger: needs CUDA")
                continue
            ce = LigerCrossEntropyLoss(ignore_index=-100)
            kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)

            def liger_kd(s, t, y, ce=ce, kl=kl):
                soft = kl(F.log_softmax(s / TEMPERATURE, dim=-1), F.log_softmax(t / TEMPERATURE, dim=-1))
                return ALPHA * ce(s, y) + (1.0 - ALPHA) * TEMPERATURE**2 * soft

            impls[name] = liger_kd
        else:
            raise SystemExit(f"unknown impl {name!r}; choose from fused, eager, reference, compile, liger")
    return impls


# --- reporting -----------------------------------------------------------------------------


def machine_info(device) -> dict:
    info = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        info["liger_kernel"] = version("liger-kernel")
    except Exception:
        info["liger_kernel"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    return info


def lookup_peak_gbps(device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_GBPS, key=len, reverse=True):
        if key in name:
            return float(PEAK_GBPS[key])
    print(f"note: no peak bandwidth known for {name!r}; pass --peak-gbps for % of peak")
    return None


def write_results(out: Path, info: dict, args: dict, rows: list[dict], ratios: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "args": args, "results": rows, "ratios": ratios}
    (out / "bench_kd_loss.json").write_text(json.dumps(payload, indent=2, default=str))
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("shape", "dtype", "impl"), k))
    with open(out / "bench_kd_loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_case(rows, ratio, base):
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['impl']:<10} {r['status']}")
            continue
        mem = r.get("peak_mem_bytes")
        print(
            f"  {r['impl']:<10} {r['median_ms']:9.3f} ms  device {_fmt(r.get('device_ms'), '8.3f')} ms  "
            f"call {_fmt(r.get('call_ms'), '7.3f')} ms  {r['effective_gbps']:8.2f} GB/s "
            f"(device {_fmt(r.get('device_gbps'), '8.2f')})  {_fmt(r['pct_of_peak'], '5.1f'):>5} % peak  "
            f"mem {_fmt(mem and mem / 2**20, '9.1f'):>9} MiB (x{_fmt(r.get('peak_mem_over_grad'), '.2f')} grad)  "
            f"|Δloss| {r['loss_abs_diff_vs_reference']:.1e}  "
            f"{ratio.get(r['impl'], float('nan')):6.2f}x {base}"
        )


@one_line_errors
def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=shape_list, help=f"comma list of NxC (default GPU {GPU_SHAPES}; CPU {CPU_SHAPES})")
    ap.add_argument("--dtypes", type=choice_list(tuple(DTYPES)), default="bf16,fp32", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--impls", type=choice_list(IMPLS), help="comma list of " + ", ".join(IMPLS))
    ap.add_argument("--base", help="impl the ratios are relative to (default fused on GPU, compile on CPU)")
    ap.add_argument("--reps", type=at_least(1), help="timed repetitions per impl (default 30 GPU, 10 CPU)")
    ap.add_argument("--warmup", type=at_least(0), default=2)
    ap.add_argument("--peak-gbps", type=positive, help="device peak memory bandwidth in GB/s")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto, cuda or cpu")
    ap.add_argument("--threads", type=at_least(1), help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="bench-results", help="folder for bench_kd_loss.{csv,json}")
    args = ap.parse_args(argv)
    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    shapes = args.shapes or shape_list(GPU_SHAPES if on_cuda else CPU_SHAPES)
    dtypes = [DTYPES[d] for d in args.dtypes]
    reps = args.reps or (30 if on_cuda else 10)
    impls = build_impls(device, args.impls)
    if args.base and args.base not in impls:
        ap.error(f"--base {args.base} is not among the implementations run here ({', '.join(impls) or 'none'})")
    base = args.base or ("fused" if "fused" in impls else "compile" if "compile" in impls else next(iter(impls)))
    peak = lookup_peak_gbps(device, args.peak_gbps)
    info = machine_info(device)
    run_args = {**vars(args), "shapes": [f"{n}x{c}" for n, c in shapes], "reps": reps, "base": base,
                "peak_gbps": peak, "temperature": TEMPERATURE, "alpha": ALPHA}

    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"impls: {list(impls)}  base: {base}  reps: {reps} (interleaved)  peak: {_fmt(peak, '.0f')} GB/s")
    print("bytes counted: N*C*(bytes(s)+bytes(t)+bytes(grad)); ratio = median over reps of t_impl/t_base\n")

    all_rows, all_ratios = [], []
    out = Path(args.out)
    for n_rows, n_classes in shapes:
        for dtype in dtypes:
            print(f"{n_rows}x{n_classes} {str(dtype).removeprefix('torch.')}")
            rows, times = bench_case(impls, n_rows, n_classes, dtype, device, reps, args.warmup, peak, reference_kd)
            ratio = paired_ratios(times, base)
            print_case(rows, ratio, base)
            all_rows += rows
            all_ratios += [{"shape": f"{n_rows}x{n_classes}", "dtype": str(dtype).removeprefix("torch."),
                            "impl": k, "base": base, "time_ratio": v} for k, v in ratio.items()]
            write_results(out, info, run_args, all_rows, all_ratios)  # keep partial results
            if on_cuda:
                torch.cuda.empty_cache()

    print(f"\nratio table (time / time of {base}; > 1 means slower than {base}):")
    impl_names = list(impls)
    print(f"  {'shape':<14}{'dtype':<10}" + "".join(f"{n:>11}" for n in impl_names))
    for n_rows, n_classes in shapes:
        for dtype in dtypes:
            key = (f"{n_rows}x{n_classes}", str(dtype).removeprefix("torch."))
            vals = {r["impl"]: r["time_ratio"] for r in all_ratios if (r["shape"], r["dtype"]) == key}
            print(f"  {key[0]:<14}{key[1]:<10}" + "".join(f"{_fmt(vals.get(n), '10.2f'):>10}x" for n in impl_names))
    print(f"\nwrote {out / 'bench_kd_loss.csv'} and {out / 'bench_kd_loss.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
