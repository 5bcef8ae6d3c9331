"""Measure what distillation gains over the labels-only baseline, over several seeds.

For each label fraction and seed it runs the real stages (train teacher, baseline,
KD student) into a run directory and collects test accuracies. Prints mean ± std and
writes JSON/Markdown. Example (the numbers quoted in the README):

    python tools/kd_gain.py --seeds 0 1 2 --label-fractions 1.0 0.1 --out bench-results/kd_gain

Any config key can be overridden: --set distill.temperature=2 --set data.audio_snr_db=-5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--config", default=None, help="a YAML config applied over the recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label-fractions", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value overrides")
    ap.add_argument("--out", default="bench-results/kd_gain")
    args = ap.parse_args()

    from distill_export.config import load_config
    from distill_export.pipeline import stage_distill, stage_train_teacher
    from distill_export.rundir import RunDir

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    out = Path(args.out)
    results = []
    for fraction in args.label_fractions:
        for seed in args.seeds:
            cfg = load_config(args.recipe, args.config, {**overrides, "seed": seed, "data.label_fraction": fraction})
            run = RunDir.create(out / f"lf{fraction}-seed{seed}")
            run.save_config(cfg)
            t0 = time.perf_counter()
            stage_train_teacher(cfg, run, quiet=True)
            stage_distill(cfg, run, quiet=True)
            rep = run.load_report()
            row = {
                "label_fraction": fraction, "seed": seed,
                "teacher": rep["metrics"]["teacher"]["accuracy"],
                "teacher_without_audio": rep["teacher"]["modality_probe"].get("without_audio"),
                "baseline": rep["metrics"]["baseline"]["accuracy"],
                "student": rep["metrics"]["student"]["accuracy"],
                "kd_gain": rep["kd_gain"], "seconds": time.perf_counter() - t0,
            }
            results.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"KD gain on {args.recipe} (overrides: {overrides or 'none'}), seeds {args.seeds}; "
        f"{platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d')}",
        "",
        "| labels kept | teacher (image+audio) | baseline (image, labels only) | KD student (image) | kd_gain (points) |",
        "|---|---|---|---|---|",
    ]
    summary = []
    for fraction in args.label_fractions:
        rows = [r for r in results if r["label_fraction"] == fraction]
        stat = {k: _mean_std([100 * r[k] for r in rows]) for k in ("teacher", "baseline", "student", "kd_gain")}
        summary.append({"label_fraction": fraction, **{k: {"mean": m, "std": s} for k, (m, s) in stat.items()}})
        lines.append(f"| {100 * fraction:.0f}% | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in stat.values()) + " |")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.json").write_text(json.dumps({"overrides": overrides, "runs": results, "summary": summary}, indent=2))
    (out / "kd_gain.md").write_text(text + "\n")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


if __name__ == "__main__":
    main()
