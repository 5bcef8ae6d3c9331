"""Explore distillation settings on the validation split: one teacher, trained once, then one
(student, baseline) pair per variant, each variant a YAML mapping of config overrides with a name.

    python tools/explore_variants.py --recipe avdigits --label-fraction 1.0 --seed 0 --out bench-results/explore \\
        "{name: hinton_T1, distill.method: hinton, distill.temperature: 1, distill.alpha: 0.8}" \\
        "{name: mixup_e36, distill.method: hinton, distill.mix: mixup, distill.epochs: 36}"

Choose by the validation columns. The stage also prints the test gain; it is written down for the
record, not for choosing (docs/results/README.md#all-labels-on-the-demo-issue-23). Each variant's
baseline gets the same epochs, augmentation and mixing as its student. Rows go to OUT/rows.jsonl
as each variant finishes; --set applies to the teacher and every variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="YAML mappings: {name: ..., dotted.key: value, ...}")
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--label-fraction", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value, for the teacher and every variant")
    ap.add_argument("--out", default="bench-results/explore")
    args = ap.parse_args()

    from distill_export.files import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work
    variants = [yaml.safe_load(v) for v in args.variants]
    if not all(isinstance(v, dict) and v.get("name") for v in variants):
        print('error: each variant is a YAML mapping with a name, e.g. "{name: a, distill.epochs: 3}"', file=sys.stderr)
        raise SystemExit(2)

    from compare_methods import base_overrides, teacher_once  # tools/ is this script's first sys.path entry

    from distill_export.config import load_config
    from distill_export.pipeline import stage_distill
    from distill_export.rundir import RunDir

    base = base_overrides(args.seed, args.label_fraction, args.set)
    out = Path(args.out)
    teacher_run, _, _ = teacher_once(args.recipe, base, out)
    for variant in variants:
        name = variant.pop("name")
        cfg = load_config(args.recipe, None, {**base, **variant, "teacher.path": str(teacher_run.file("teacher.pt"))})
        run = RunDir.create(out / name)
        run.save_config(cfg)
        start = time.perf_counter()
        stage_distill(cfg, run, quiet=True)
        report = run.load_report()
        distill = report["distill"]
        row = {"name": name, "overrides": variant,
               "val_baseline": distill["baseline_training"]["best_val_accuracy"],
               "val_student": distill["student_training"]["best_val_accuracy"],
               "fit": distill.get("fit"),
               "test_gain_for_the_record": report["kd_gain"], "p_value": report["kd_gain_p_value"],
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row), flush=True)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
