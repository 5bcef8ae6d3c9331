"""Benchmark training at scale: peak memory of streamed distillation as the rows grow, the
tool's per-step overhead against a minimal hand-written PyTorch loop, and DataLoader workers.

    python tools/bench_train.py --rows 10000 40000 --out bench-results/train     # the issue's sizes
    python tools/bench_train.py --rows 300 600 --throughput-rows 256 --quick      # a quick check

It writes synthetic 96x96 RGB PNGs itself (one folder, reused across runs: --images DIR), with a
class-dependent pattern, 200 val and 200 test rows, and measures:

  * memory: peak RSS of `distill-export run` (streamed training split, data.streaming=on) per
    row count, in a fresh process each (its main process; and its largest child, a forked worker,
    which counts the pages it shares with the parent);
    the target is ratio(largest / smallest) <= 1.25;
  * overhead: samples/s of distill.train_student (mobilenet_v3_small at 96x96, Hinton KD with
    cached teacher logits, in-memory decoded data) against a minimal loop with the same model,
    batches, optimiser and loss, interleaved A B A B, both warmed up first; the tool's steady
    rate (epochs 2-3) and its first epoch with the setup; on CUDA also without channels_last;
    target: the tool within 10%;
  * workers: samples/s of the streamed training path (decoding PNGs per batch) with 0, 1, 2 workers.

Writes JSON (and prints it). Every number is one machine's, under whatever load it had.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, fail, named_once, one_line_errors  # noqa: E402
HELD_OUT = 200  # val and test rows each
SIZE = 96
CLASSES = 10

# Runs the CLI in this process and prints its peak RSS (KiB on Linux) and its largest child's.
RSS_WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr, flush=True))\n"
    "sys.argv = ['distill-export', *sys.argv[1:]]\n"
    "from distill_export.entry import main\n"
    "main()\n"
)


def write_images(folder: Path, n_train: int) -> None:
    """folder/img/{split}_{i}.png, written once; existing files are kept."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"train_{i}" for i in range(n_train)] + [f"{s}_{i}" for s in ("val", "test") for i in range(HELD_OUT)]
    for name in names:
        path = folder / "img" / f"{name}.png"
        if path.exists():
            continue
        k = int(name.split("_")[1]) % CLASSES
        img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        img[8 * k : 8 * k + 16, 8 * k : 8 * k + 16, k % 3] = 240  # the class: a bright square's place and colour
        Image.fromarray(img).save(path)


def write_manifest(folder: Path, n_train: int, into: Path) -> Path:
    """A manifest of write_images' PNGs (absolute paths), in `into` (the tool's scratch folder, removed
    at its end): never a file in the user's --images folder (forty-second audit B4), nor a folder left
    behind in /tmp (a temporary folder per manifest stayed after every call)."""
    path = Path(into) / f"manifest_{n_train}.csv"
    images = folder.resolve() / "img"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        for i in range(n_train):
            w.writerow([images / f"train_{i}.png", i % CLASSES, "train"])
        for split in ("val", "test"):
            for i in range(HELD_OUT):
                w.writerow([images / f"{split}_{i}.png", i % CLASSES, split])
    return path


def peak_rss(manifest: Path, student: str, workers: int, threads: int) -> dict:
    """One streamed distillation run (teacher, student, baseline; one epoch each) in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(
            f"data: {{streaming: 'on', image_size: {SIZE}, num_workers: {workers}, student_modality: image}}\n"
            "teacher: {epochs: 1}\n"
            "distill: {epochs: 1, self_training_control: false, method: hinton}\n"
            "export: {formats: [onnx]}\n"
            "profile: {batches: [1], threads: [1], warmup_s: 0.01, min_time_s: 0.05, min_iters: 5}\n")
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, "run", "--data", str(manifest), "--config", str(cfg),
                               "--student", student, "--device", "cpu", "--out", str(Path(tmp) / "run"), "--quiet"],
                              capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KIB")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"run on {manifest.name} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    main_kib, child_kib = (int(v) for v in line.split()[1:3])
    return {"main_mib": round(main_kib / 1024, 1), "largest_child_mib": round(child_kib / 1024, 1),
            "seconds": round(seconds, 1)}


def _setup_in_memory(manifest: Path, student: str, rows: int, streaming: str = "off", workers: int = 0,
                     device: str = "cpu", amp: str = "off", batch_size: int | None = None, epochs: int = 1):
    from distill_export.config import load_config
    from distill_export.data import load_dataset

    overrides = {
        "data.source": str(manifest), "data.image_size": SIZE, "data.streaming": streaming,
        "data.num_workers": workers, "data.max_train_rows": rows, "student.name": student, "device": device,
        "distill.method": "hinton", "distill.epochs": epochs, "distill.amp": amp}
    if batch_size:
        overrides["distill.batch_size"] = batch_size
    config = load_config("avdigits", None, overrides)
    return config, load_dataset(config.data, config.seed)


TOOL_EPOCHS = 3  # the tool's steady rate: epochs 2..3 (after its setup and first epoch)


def runners(manifest: Path, student: str, rows: int, device: str = "cpu", amp: str = "off",
            batch_size: int | None = None):
    """(training rows, variants {name: config}, tool(config) -> (first, steady) samples/s, minimal() -> samples/s):
    the loops throughput() times (tools/profile_host.py profiles them)."""
    import contextlib
    import copy

    import torch
    import torch.nn.functional as F

    from distill_export.distill import train_student
    from distill_export.nets.model_io import new_student
    from distill_export.losses import kd_loss
    from distill_export.train import predict

    config, data = _setup_in_memory(manifest, student, rows, device=device, amp=amp, batch_size=batch_size,
                                    epochs=TOOL_EPOCHS)
    nchw_config = copy.deepcopy(config)  # the same run, NCHW (the data is decoded once)
    nchw_config.distill.channels_last = False
    dev = torch.device(device)
    n = len(data.train)
    teacher_logits = torch.randn(n, data.num_outputs, generator=torch.Generator().manual_seed(0)).to(dev)
    x, y = data.train.inputs["image"].to(dev), data.train.labels.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp == "bf16" and dev.type == "cuda" \
        else contextlib.nullcontext
    bs = config.distill.batch_size

    def tool(cfg) -> tuple[float, float]:
        """(samples/s of epoch 1 with the setup, samples/s of epochs 2..TOOL_EPOCHS)."""
        ends = []

        def on_epoch(*_):
            sync()
            ends.append(time.perf_counter())

        sync()
        t0 = time.perf_counter()
        student, _ = train_student(cfg, data, teacher_logits, torch.empty(0), dev, quiet=True, on_epoch=on_epoch)
        # train_student also validates once per epoch, which is not training: timed again, warm
        v0 = time.perf_counter()
        predict(student.forward_features, data.val.inputs["image"].to(dev), len(data.val))
        sync()
        val = time.perf_counter() - v0
        later = TOOL_EPOCHS - 1
        return n / (ends[0] - t0 - val), later * n / (ends[-1] - ends[0] - later * val)

    def minimal() -> float:
        model = new_student(config, data).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=config.distill.lr, weight_decay=config.distill.weight_decay)
        steps = -(-n // bs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.distill.lr, total_steps=steps, pct_start=0.15)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).to(dev)
        a = config.distill.alpha
        sync()
        t0 = time.perf_counter()
        model.train()
        for s in range(0, n, bs):
            rows = order[s : s + bs]
            with autocast():
                logits = model(x[rows])
                labeled = y[rows] != -100
                ce = F.cross_entropy(logits.float(), torch.where(labeled, y[rows], 0), reduction="none")
                ce = (ce * labeled).sum() / labeled.sum().clamp(min=1)
                loss = a * ce + (1 - a) * kd_loss(logits, teacher_logits[rows], None, temperature=4.0, alpha=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        sync()
        return n / (time.perf_counter() - t0)

    variants = {"tool": config} if dev.type != "cuda" else {"tool": config, "tool_nchw": nchw_config}
    return n, variants, tool, minimal


def throughput(manifest: Path, student: str, rows: int, repeats: int, device: str = "cpu", amp: str = "off",
               batch_size: int | None = None) -> dict:
    """Samples/s of distill.train_student against a minimal loop (same model, batches, optimiser, loss).
    On CUDA both use bf16 autocast when amp=bf16 (the tool also trains channels_last; on CUDA
    the tool is measured NCHW too, as `tool_nchw`). batch_size: distill.batch_size (default:
    the config's, 64).

    The tool trains TOOL_EPOCHS epochs per repeat, timestamped at each epoch's end (its
    validation, timed again warm, is taken out): `tool_first_epoch` counts the setup (the
    student built and moved, the objective) and epoch 1; `tool` is the steady rate of the later
    epochs, the per-step overhead the target is about. Both are warmed up once, untimed (the
    fused kernel's autotuning, cuDNN's choices, lazy imports)."""
    n, variants, tool, minimal = runners(manifest, student, rows, device, amp, batch_size)
    bs = variants["tool"].distill.batch_size
    minimal()  # warm-up (allocator, kernels, lazy imports, the fused kernel's autotuning), untimed
    for cfg in variants.values():
        tool(cfg)
    sps: dict[str, list] = {k: [] for k in [*variants, *(f"{k}_first_epoch" for k in variants), "minimal"]}
    for _ in range(repeats):  # interleaved: A B C A B C
        for name, cfg in variants.items():
            first, steady = tool(cfg)
            sps[f"{name}_first_epoch"].append(first)
            sps[name].append(steady)
        sps["minimal"].append(minimal())
    best_min = max(sps["minimal"])
    result = {"rows": n, "batch_size": bs, "device": device, "amp": amp, "tool_epochs": TOOL_EPOCHS}
    for name, values in sps.items():
        result[f"{name}_samples_per_s"] = [round(v, 1) for v in values]
        if name != "minimal":
            result[f"{name}_overhead_pct"] = round(100 * (best_min / max(values) - 1), 1)
    result["overhead_pct"] = result["tool_overhead_pct"]
    result["target_overhead_pct"] = 10
    return result


def workers_throughput(manifest: Path, student: str, rows: int, workers_list: list[int]) -> list[dict]:
    """Samples/s of one streamed training epoch (decode per batch in workers) per worker count."""
    import torch

    from distill_export.distill import train_student

    out = []
    for workers in workers_list:
        config, data = _setup_in_memory(manifest, student, rows, streaming="on", workers=workers)
        n = len(data.train)
        logits = torch.randn(n, data.num_outputs, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        train_student(config, data, logits, torch.empty(0), torch.device("cpu"), quiet=True)
        out.append({"workers": workers, "rows": n, "samples_per_s": round(n / (time.perf_counter() - t0), 1)})
    return out


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # at least one training row per class (fewer failed on the tool's own manifest: 42nd audit B9)
    ap.add_argument("--rows", type=at_least(CLASSES), nargs="+", default=[10000, 40000],
                    help="training rows for the memory runs")
    ap.add_argument("--throughput-rows", type=at_least(CLASSES), default=2000)
    ap.add_argument("--student", default="mobilenet_v3_small")
    ap.add_argument("--workers", type=at_least(0), nargs="+", default=[0, 1, 2])
    ap.add_argument("--rss-workers", type=at_least(0), default=2, help="data.num_workers in the memory runs")
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--threads", type=at_least(1), default=1)
    ap.add_argument("--images", default=None, help="folder for the PNGs (default: a temporary one)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "overhead", "workers"])
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the overhead step's device")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast in the overhead step (CUDA)")
    ap.add_argument("--batch-sizes", type=at_least(1), nargs="+", default=None,
                    help="the overhead step at each of these batch sizes (default: the config's, 64)")
    ap.add_argument("--out", default="bench-results/train")
    args = ap.parse_args()
    named_once(ap, args, "rows", "workers", "batch_sizes")
    # every step skipped measured nothing (exit 0), and a skipped step's flags were ignored (59th audit B15)
    steps = {"memory": ("rows", "rss_workers"), "overhead": ("device", "amp", "batch_sizes"), "workers": ("workers",)}
    if set(args.skip) >= set(steps):
        ap.error("--skip memory overhead workers leaves nothing to measure")
    if {"overhead", "workers"} <= set(args.skip):
        steps["overhead+workers"] = ("throughput_rows", "repeats", "quick")
    if given := [f"--{k.replace('_', '-')}" for step, keys in steps.items() if set(step.split("+")) <= set(args.skip)
                 for k in keys if getattr(args, k) != ap.get_default(k)]:
        ap.error(f"{', '.join(given)} belong{'s' * (len(given) == 1)} to a step --skip leaves out: drop "
                 f"{'them' if len(given) > 1 else 'it'}")
    sys.path.insert(0, str(REPO))
    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work
    if args.images:  # reused across runs (not new), but never a run's folder: 420 PNGs went into one (59th B14)
        from distill_export.output_paths import _enclosing_run, is_run_dir

        inside = Path(args.images) if is_run_dir(Path(args.images)) else _enclosing_run(Path(args.images))
        if inside is not None:
            fail(f"--images {args.images} is {'a run folder' if inside == Path(args.images) else f'inside the run {inside}'}; give a folder outside any run")
    from distill_export.config import load_config
    from distill_export.errors import DistillExportError

    try:  # a bad --student is one line before any image is written, not a child run's failure
        fraction = load_config("avdigits", None, {"student.name": args.student}).data.label_fraction
        # a child run's label fraction must keep a row (the product rounds fraction x rows), or the run
        # failed after the PNGs were written (58th audit B12)
        least = next(n for n in range(CLASSES, 10**7) if round(fraction * n) >= 1)
        for flag, rows in [("--rows", r) for r in args.rows] + [("--throughput-rows", args.throughput_rows)]:
            if rows < least:
                raise DistillExportError(f"{flag} {rows}: the runs label {fraction:g} of their training rows, which "
                                         f"keeps no row of {rows} ({fraction:g} x {rows} rounds to 0); give at least {least}")
    except DistillExportError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None

    sys.path.insert(0, str(REPO))
    import torch

    if args.device == "cuda" and "overhead" not in args.skip and not torch.cuda.is_available():
        fail("--device cuda: no GPU is visible here (use --device cpu)")  # before any PNG (42nd audit B8)
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))  # its PNGs (without --images) and manifests
    try:
        measure(args, Path(args.images) if args.images else scratch / "images", scratch, torch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(args, folder: Path, scratch: Path, torch) -> None:
    write_images(folder, max([*args.rows, args.throughput_rows]))
    result = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                          "platform": platform.platform(), "cpu": platform.processor(), "threads": args.threads},
              "image": [3, SIZE, SIZE], "student": args.student}
    if "memory" not in args.skip:
        memory = {str(n): peak_rss(write_manifest(folder, n, scratch), args.student, args.rss_workers, args.threads)
                  for n in args.rows}
        small, large = memory[str(min(args.rows))], memory[str(max(args.rows))]
        result["memory"] = {"runs": memory, "workers": args.rss_workers,
                            "main_rss_ratio": round(large["main_mib"] / small["main_mib"], 3), "target_ratio": 1.25}
    repeats = 1 if args.quick else args.repeats
    manifest = write_manifest(folder, args.throughput_rows, scratch)
    if "overhead" not in args.skip:
        runs = [throughput(manifest, args.student, args.throughput_rows, repeats, args.device, args.amp, bs)
                for bs in (args.batch_sizes or [None])]
        result["overhead"] = runs[0] if len(runs) == 1 else runs  # one dict, or one per batch size
    if "workers" not in args.skip:
        result["workers"] = workers_throughput(manifest, args.student, args.throughput_rows, args.workers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
