"""Where the host time goes on CUDA (issue 22): the training step of distill.train_student
against the minimal loop of tools/bench_train.py, and one fused KD loss call.

    python tools/profile_host.py --out gpu-results/profile --images /tmp/bench-train-images

Writes text tables under --out:
  * train_{tool,minimal}_ops.txt: torch.profiler's operators by self CPU time, and by device time,
    over one warm training run of each (the tool's 3 epochs, the minimal loop's one: compare the
    per-step counts, not the totals); steps.txt: the kernel launches and host ms per step;
  * train_tool_python.txt: cProfile of the tool's warm run, by cumulative time;
  * kd_call_python.txt: cProfile of --kd-calls fused fwd+bwd calls at 8192x1000 bf16, by own time.
Numbers are one machine's, under its load; the benchmarks (bench_train.py, bench_kd_loss.py) time,
this explains.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import write_images, write_manifest, runners  # noqa: E402
from toolargs import Parser, at_least, fail, one_line_errors  # noqa: E402


def _python_profile(fn, sort: str, limit: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats(sort).print_stats(limit)
    return text.getvalue()


def _op_tables(fn, device: str) -> tuple[str, int, float]:
    """(operator tables, kernel launches, host seconds) of one call of fn under torch.profiler."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
    averages = prof.key_averages()
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                          "cuLaunchKernelEx"))
    tables = (averages.table(sort_by="self_cpu_time_total", row_limit=30) + "\n\n"
              + averages.table(sort_by="self_device_time_total", row_limit=20))
    return tables, launches, seconds


def profile_training(out: Path, images: Path, rows: int, batch_size: int, amp: str, device: str, scratch: Path) -> None:
    n, variants, tool, minimal = runners(write_manifest(images, rows, scratch), "mobilenet_v3_small", rows, device, amp,
                                         batch_size)
    config = variants["tool"]
    minimal()  # warm: autotuning, cuDNN, lazy imports
    tool(config)
    steps = -(-n // batch_size)
    lines = [f"rows {n}, batch {batch_size}, amp {amp}, {steps} steps an epoch; tool: {config.distill.epochs} epochs "
             "(validation included), minimal: 1 epoch"]
    for name, fn, epochs in (("tool", lambda: tool(config), config.distill.epochs), ("minimal", minimal, 1)):
        tables, launches, seconds = _op_tables(fn, device)
        (out / f"train_{name}_ops.txt").write_text(tables)
        lines.append(f"{name}: {launches} kernel launches, {launches / (steps * epochs):.0f} a step; "
                     f"{1e3 * seconds / (steps * epochs):.2f} ms a step under the profiler")
    (out / "steps.txt").write_text("\n".join(lines) + "\n")
    (out / "train_tool_python.txt").write_text(_python_profile(lambda: tool(config), "cumulative", 45))
    print("\n".join(lines))


def profile_kd_call(out: Path, calls: int) -> None:
    import torch

    from distill_export.losses.kd_triton import kd_loss_fused

    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(8192, 1000, device="cuda", generator=g).bfloat16().requires_grad_()
    t = torch.randn(8192, 1000, device="cuda", generator=g).bfloat16()
    y = torch.randint(0, 1000, (8192,), device="cuda", generator=g)

    def run():
        for _ in range(calls):
            s.grad = None
            kd_loss_fused(s, t, y, temperature=4.0, alpha=0.5).backward()
        torch.cuda.synchronize()

    run()  # warm: compile and autotune
    (out / "kd_call_python.txt").write_text(_python_profile(run, "tottime", 40))


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", default=None, help="bench_train.py's PNG folder (reused; default: a temporary one)")
    ap.add_argument("--rows", type=at_least(64), default=1024)  # (at least the 10 classes, and a batch)
    ap.add_argument("--batch-size", type=at_least(1), default=64)
    ap.add_argument("--amp", default=None, choices=["off", "bf16"], help="default: bf16 on CUDA, off on CPU")
    ap.add_argument("--kd-calls", type=at_least(1), default=200)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the training tables only, to check this script without a GPU")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from distill_export.output_paths import check_tool_output

    if args.device == "cpu" and args.amp == "bf16":  # autocast is CUDA's here (42nd audit A1)
        fail("--amp bf16 is CUDA autocast; with --device cpu both loops run fp32 (drop --amp)")
    if args.device == "cpu" and args.kd_calls != ap.get_default("kd_calls"):  # accepted and unused (59th B11)
        fail("--kd-calls does not apply with --device cpu (the fused KD call is profiled on CUDA only): drop it")
    amp = args.amp or ("bf16" if args.device == "cuda" else "off")
    # new or empty, outside any run, before any work; removed again if the tool fails (42nd audit A4)
    check_tool_output(args.out, folder=True, remove_on_failure=True)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        fail("tools/profile_host.py profiles CUDA host time and needs a GPU; none is visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="profile-host-"))  # its PNGs (without --images) and manifest, removed at the end
    try:
        images = Path(args.images) if args.images else scratch / "images"
        write_images(images, args.rows)
        if args.device == "cuda":
            profile_kd_call(out, args.kd_calls)
        profile_training(out, images, args.rows, args.batch_size, amp, args.device, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
