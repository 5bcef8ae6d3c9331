"""Peak RSS of decoding a manifest (and of one epoch of a run) at two sizes: is the memory bounded
by what is held (issue 24: the 20,000-row peak within 1.25x of the 5,000-row one)?

    python tools/bench_decode_memory.py --rows 5000 20000 [--epoch] [--keep DIR]

Writes 96x96 RGB PNG manifests (10 classes, splits drawn 80/10/10) into a temp folder, then for
each size runs, one process at a time, a fresh Python that loads the manifest with default
settings (--epoch: `distill-export run --teacher-epochs 1 --epochs 1 --formats onnx`) and reads
its peak RSS (ru_maxrss). Prints one line per measurement and the ratios.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, one_line_errors  # noqa: E402

SIZE, CLASSES = 96, 10

DECODE = """
import json, resource, sys, time
from distill_export.config import DataConfig
from distill_export.data import load_dataset
t = time.time()
data = load_dataset(DataConfig(source=sys.argv[1]), seed=0)
held = 0
for s in ("train", "val", "test"):
    for v in getattr(data, s).inputs.values():
        held += v.data.nbytes if hasattr(v, "lut") else v.numel() * v.element_size()
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "held_mb": held / 2**20,
                  "seconds": time.time() - t}))
"""


def write_manifest(folder: Path, rows: int, seed: int = 0) -> Path:
    """rows 96x96 RGB PNGs (class k: a bright square at its place on noise) and manifest.csv."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["image,label"]
    base = rng.integers(0, 60, (64, SIZE, SIZE, 3), dtype=np.uint8)  # noise backgrounds, reused
    for i in range(rows):
        k = i % CLASSES
        img = base[i % 64].copy()
        r, c = divmod(k, 4)
        img[8 + 24 * r : 28 + 24 * r, 8 + 20 * c : 28 + 20 * c] = (40 + 20 * k, 220 - 15 * k, 120)
        Image.fromarray(img).save(folder / "img" / f"{i:05d}.png", compress_level=1)
        lines.append(f"img/{i:05d}.png,c{k}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def measure_decode(manifest: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", DECODE, str(manifest)], capture_output=True, text=True, env=env)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: decode of {manifest} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_epoch(manifest: Path, run_dir: Path) -> dict:
    """Peak RSS of `distill-export run` (one teacher epoch, one student epoch), in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = ("import resource, subprocess, sys, json, time; t = time.time(); "
              "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
              "print(json.dumps({'rc': r.returncode, 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
              "'seconds': time.time() - t, 'last_lines': r.stderr.strip().splitlines()[-3:]}))")
    cmd = [sys.executable, "-c", script, sys.executable, "-m", "distill_export", "run", "--data", str(manifest),
           "--out", str(run_dir), "--teacher-epochs", "1", "--epochs", "1", "--formats", "onnx"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@one_line_errors
def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--epoch", action="store_true", help="also measure one epoch of `distill-export run`")
    ap.add_argument("--keep", type=Path, default=None, help="write the manifests here (kept) instead of a temp folder")
    args = ap.parse_args(argv)
    # the manifest draws each row's split 80/10/10 at random: below 100 rows a split was often empty, and the
    # child decode failed after the PNGs were written (59th audit B10); a size twice measured nothing new
    if min(args.rows) < 100 or len(set(args.rows)) < len(args.rows):
        why = "give at least 100 rows per manifest" if min(args.rows) < 100 else "a size is named twice"
        print(f"error: --rows {' '.join(map(str, args.rows))}: {why}", file=sys.stderr)
        raise SystemExit(2)
    if args.keep is not None:  # a new or empty folder outside any run: never a user's files (issue 24)
        from distill_export.output_paths import check_tool_output

        check_tool_output(args.keep, folder=True, flag="--keep")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        results = {}
        for n in args.rows:
            folder = root / f"rgb96_{n}"
            t = time.time()
            manifest = folder / "manifest.csv" if (folder / "manifest.csv").is_file() else write_manifest(folder, n)
            print(f"{n} rows: manifest ready ({time.time() - t:.0f} s)", flush=True)
            r = {"decode": measure_decode(manifest)}
            print(f"{n} rows: decode peak RSS {r['decode']['peak_mb']:.0f} MB, held {r['decode']['held_mb']:.0f} MB, "
                  f"{r['decode']['seconds']:.0f} s", flush=True)
            if args.epoch:
                r["epoch"] = measure_epoch(manifest, Path(tmp) / f"run_{n}")
                print(f"{n} rows: one-epoch run peak RSS {r['epoch']['peak_mb']:.0f} MB (exit {r['epoch']['rc']}), "
                      f"{r['epoch']['seconds']:.0f} s", flush=True)
                if r["epoch"]["rc"]:  # exit 1 is a failed gate (the run finished); anything else, a failure
                    print(f"{n} rows: the run's last lines: {' | '.join(r['epoch']['last_lines'])}", flush=True)
            results[n] = r
        lo, hi = min(results), max(results)
        for what in results[lo]:
            print(f"{what}: peak RSS ratio {hi} / {lo} rows = {results[hi][what]['peak_mb'] / results[lo][what]['peak_mb']:.2f}")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
