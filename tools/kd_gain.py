"""Measure what distillation gains over the labels-only baseline, over several seeds, with the
self-training control always on (an image-only teacher of the same size, same rows and terms).

For each label fraction and seed it runs the real stages (train teacher, distill: baseline,
student, control) into a run directory and collects test accuracies and the paired statistics
(kd_gain 95% CI, McNemar p). Prints mean ± std and writes JSON/Markdown. Example:

    python tools/kd_gain.py --seeds 0 1 2 --label-fractions 0.05 1.0 --out bench-results/kd_gain

Any config key can be overridden: --set distill.method=hinton --set data.audio_snr_db=-5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import yaml

COLUMNS = ("teacher", "control_teacher", "baseline", "self_training", "student", "kd_gain", "cross_modal_gain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--config", default=None, help="a YAML config applied over the recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label-fractions", type=float, nargs="+", default=None,
                    help="default: the recipe's own, then 1.0 (all labels)")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value overrides")
    ap.add_argument("--out", default="bench-results/kd_gain")
    args = ap.parse_args()

    from distill_export.config import load_config
    from distill_export.pipeline import stage_distill, stage_train_teacher
    from distill_export.rundir import RunDir

    overrides = {"distill.self_training_control": True}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    fractions = args.label_fractions
    if fractions is None:
        own = load_config(args.recipe, args.config, overrides).data.label_fraction
        fractions = list(dict.fromkeys([own, 1.0]))
    out = Path(args.out)
    results = []
    for fraction in fractions:
        for seed in args.seeds:
            cfg = load_config(args.recipe, args.config, {**overrides, "seed": seed, "data.label_fraction": fraction})
            run = RunDir.create(out / f"lf{fraction}-seed{seed}")
            run.save_config(cfg)
            t0 = time.perf_counter()
            stage_train_teacher(cfg, run, quiet=True)
            stage_distill(cfg, run, quiet=True)
            rep = run.load_report()
            comp = rep["comparisons"]
            row = {
                "label_fraction": fraction, "seed": seed, "method": rep["distill"]["method"],
                "terms": rep["distill"]["terms"],
                "teacher": rep["metrics"]["teacher"]["accuracy"],
                "teacher_modality_probe": rep["teacher"]["modality_probe"],
                "control_teacher": rep["distill"]["self_training_control"]["teacher_accuracy"],
                "baseline": rep["metrics"]["baseline"]["accuracy"],
                "self_training": rep["metrics"]["self_training"]["accuracy"],
                "student": rep["metrics"]["student"]["accuracy"],
                "kd_gain": rep["kd_gain"], "kd_gain_ci95": rep["kd_gain_ci95"],
                "kd_gain_p_value": rep["kd_gain_p_value"], "kd_verdict": rep["kd_verdict"],
                "cross_modal_gain": comp["student_vs_self_training"]["gain"],
                "cross_modal_p_value": comp["student_vs_self_training"]["p_value"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"KD gain on {args.recipe} (overrides: {overrides}), seeds {args.seeds}; "
        f"{platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d')}. Test accuracy (%), mean ± std.",
        "",
        "| labels kept | teacher (all modalities) | control teacher (student's modality) | baseline (labels only) "
        "| self-training control | KD student | kd_gain (points) | student − control (points) | verdicts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for fraction in fractions:
        rows = [r for r in results if r["label_fraction"] == fraction]
        stat = {k: _mean_std([100 * r[k] for r in rows]) for k in COLUMNS}
        verdicts = ", ".join(f"{r['kd_verdict']} (p={r['kd_gain_p_value']:.1g})" for r in rows)
        summary.append({"label_fraction": fraction, **{k: {"mean": m, "std": s} for k, (m, s) in stat.items()},
                        "kd_gain_min": min(100 * r["kd_gain"] for r in rows)})
        lines.append(f"| {100 * fraction:g}% | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in stat.values())
                     + f" | {verdicts} |")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.json").write_text(json.dumps({"recipe": args.recipe, "overrides": overrides, "runs": results,
                                                  "summary": summary}, indent=2))
    (out / "kd_gain.md").write_text(text + "\n")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


if __name__ == "__main__":
    main()
