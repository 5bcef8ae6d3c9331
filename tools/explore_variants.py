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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, one_line_errors  # noqa: E402


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="YAML mappings: {name: ..., dotted.key: value, ...}")
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--label-fraction", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value, for the teacher and every variant")
    ap.add_argument("--out", default="bench-results/explore")
    args = ap.parse_args()

    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work

    from compare_methods import base_overrides, teacher_once  # tools/ is this script's first sys.path entry

    from distill_export.config import load_config
    from distill_export.errors import DistillExportError
    from distill_export.pipeline import stage_distill
    from distill_export.rundir import RunDir

    out = Path(args.out)
    try:
        base = base_overrides(args.seed, args.label_fraction, args.set)
        variants = checked_variants(args.variants)
        teacher_file = str(out / "teacher" / "teacher.pt")
        load_config(args.recipe, None, base)  # the teacher's config
        # Every variant's config passes the checks `run` applies, before the teacher trains: a bad
        # override of the last variant fails now, not after the others trained.
        configs = {}
        for name, variant in variants.items():
            try:
                configs[name] = load_config(args.recipe, None, {**base, **variant, "teacher.path": teacher_file})
            except DistillExportError as exc:
                raise DistillExportError(f"variant {name}: {exc}") from None
    except (DistillExportError, yaml.YAMLError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        raise SystemExit(2) from None

    teacher_run, _, _ = teacher_once(args.recipe, base, out)
    for name, variant in variants.items():
        cfg = configs[name]
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


RESERVED = ("teacher", "rows.jsonl")  # what this tool writes into --out besides the variants


def checked_variants(texts: list[str]) -> dict[str, dict]:
    """{name: overrides} of the command line's YAML mappings. Each name is a plain folder name
    under --out (no separators, not . or .., not the teacher's folder) and unique, or a
    DistillExportError: a name such as ../escaped would write a run outside --out."""
    from distill_export.errors import DistillExportError

    from distill_export import safe_yaml

    variants: dict[str, dict] = {}
    for i, text in enumerate(texts, 1):
        try:  # the product's YAML: a key given twice is refused, not the last one kept (58th audit A6)
            v = safe_yaml.load(text)
        except yaml.YAMLError as exc:  # named: "while parsing a flow mapping" alone said not which (A5)
            raise DistillExportError(f"variant {i} ({text[:60]!r}) is not YAML: {str(exc).splitlines()[0]}") from None
        if not (isinstance(v, dict) and v.get("name")):
            raise DistillExportError(f'each variant is a YAML mapping with a name, e.g. "{{name: a, distill.epochs: 3}}", '
                                     f"got {text[:80]!r}")
        name = v.pop("name")
        if not isinstance(name, str) or name in (".", "..") or any(c in name for c in "/\\\0") or name in RESERVED:
            raise DistillExportError(f"variant name {str(name)[:80]!r} is not a plain folder name under --out (no /, \\, "
                                     f"'.', '..', {', '.join(RESERVED)})")
        if len(name.encode()) > 200:  # a 300-character name failed as "--out ... File name too long" after the teacher
            raise DistillExportError(f"variant name {name[:40]!r}... is {len(name.encode())} bytes long; a folder name "
                                     "takes at most 200")
        if name in variants:
            raise DistillExportError(f"variant name {name!r} is given twice; each variant needs its own folder")
        # every variant distills from the one teacher trained before them: a teacher.* override was recorded in
        # the variant's config.yaml and row while the student learned from the shared teacher (58th audit B11)
        # data, seed and task too: the teacher was trained and scored on the base data (a variant's missing
        # manifest failed after the teacher and the variants before it trained: 59th audit B6)
        if teacher_keys := sorted(k for k in v if str(k).split(".")[0] in ("teacher", "data", "seed", "task")):
            raise DistillExportError(f"variant {name!r} sets {', '.join(map(str, teacher_keys))}, but every variant "
                                     "distills from the one teacher trained first: set it with --set for all of them")
        variants[name] = v
    return variants


if __name__ == "__main__":
    main()
