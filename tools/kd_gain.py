"""Measure what distillation gains over the labels-only baseline, over several seeds, with the
self-training control always on (an image-only teacher of the same size, same rows and terms).

For each label fraction and seed it runs the real stages (train teacher, distill: baseline,
student, control) into a run directory and collects test accuracies and the paired statistics
(kd_gain 95% CI, McNemar p). Prints mean ± std and writes JSON/Markdown. Example:

    python tools/kd_gain.py --seeds 0 1 2 --label-fractions 0.05 1.0 --out bench-results/kd_gain

Any config key can be overridden: --set distill.method=hinton --set data.audio_snr_db=-5

With --fusions (the default for the captioned_digits recipe: late concat) it prints one row per
model instead, each seed a column: baseline, self-training control, KD from each teacher fusion,
and the all-labels reference (the same student trained on every training label), plus per seed
the paired comparisons (95% CI, McNemar p) and the share of the baseline -> all-labels gap closed:

    python tools/kd_gain.py --recipe captioned_digits --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, dotted_sets, one_line_errors  # noqa: E402

COLUMNS = ("teacher", "control_teacher", "baseline", "self_training", "student", "kd_gain", "cross_modal_gain")


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--config", default=None, help="a YAML config applied over the recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label-fractions", type=float, nargs="+", default=None,
                    help="default: the recipe's own, then 1.0 (all labels)")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value overrides")
    ap.add_argument("--students", nargs="+", default=None,
                    help="one row per student architecture (default: the recipe's), e.g. tiny_cnn "
                         "mobilenet_v3_small resnet18: where a wider student stops gaining from the teacher")
    ap.add_argument("--out", default="bench-results/kd_gain")
    ap.add_argument("--fusions", nargs="+", choices=("late", "concat"), default=None,
                    help="one KD row per teacher fusion (the first also trains the self-training control); "
                         "default for the captioned_digits recipe: late concat")
    args = ap.parse_args()
    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True)  # new or empty folder, outside any run: before any work
    if args.fusions is None and args.recipe == "captioned_digits":
        args.fusions = ["late", "concat"]

    if args.fusions:
        return fusion_rows(args, checked(fusion_configs, args))

    overrides, students, fractions, configs = checked(gain_configs, args)
    out = Path(args.out)
    results = []
    for (student, fraction, seed), cfg in configs.items():
        t0 = time.perf_counter()
        where = f"lf{fraction}-seed{seed}" if args.students is None else f"{student}-lf{fraction}-seed{seed}"
        run, rep = teacher_and_distill(cfg, out / where)
        comp = rep["comparisons"]
        metric = rep.get("task", {}).get("headline", "accuracy")  # detection: map50
        # A labels_only objective (e.g. tune's "don't distill") runs no control: those cells are None.
        control = rep["distill"].get("self_training_control") or {}
        cross = comp.get("student_vs_self_training") or {}
        fit = rep["distill"].get("fit") or {}
        row = {
            "student_name": student, "label_fraction": fraction, "seed": seed, "method": rep["distill"]["method"],
            # whole rows, at least one per class: 5% of 12 rows keeps 25% (the table said 5%; 58th audit B9)
            "label_fraction_kept": rep["distill"].get("label_fraction_kept"),
            "terms": rep["distill"]["terms"],
            "teacher": rep["metrics"]["teacher"][metric],
            "teacher_modality_probe": rep["teacher"]["modality_probe"],
            "distilled": rep["distill"].get("distilled", True),
            "control_teacher": control.get("teacher_accuracy"),
            "baseline": rep["metrics"]["baseline"][metric],
            "self_training": (rep["metrics"].get("self_training") or {}).get(metric),
            "student": rep["metrics"]["student"][metric],
            "kd_gain": rep["kd_gain"], "kd_gain_ci95": rep["kd_gain_ci95"],
            "kd_gain_p_value": rep["kd_gain_p_value"], "kd_verdict": rep["kd_verdict"],
            "cross_modal_gain": cross.get("gain"),
            "cross_modal_ci95": cross.get("ci95"),
            "cross_modal_p_value": cross.get("p_value"),
            # the teachers' headline metric on the unlabeled pool (the rows whose labels were hidden)
            "teacher_on_pool": (rep["teacher"].get("unlabeled_pool") or {}).get(metric),
            "control_teacher_on_pool": (control.get("teacher_unlabeled_pool") or {}).get(metric),
            "metric": metric,
            # labelled training rows (capacity.training_fit): can this student fit the teacher?
            "fit_student": fit.get("student"), "fit_teacher_student_view": fit.get("teacher_student_view"),
            "fit_gap": fit.get("gap"), "fit_flagged": fit.get("flagged"),
            # validation accuracy (best epoch): what a choice between settings may read; test is for the record
            "val": {"baseline": (rep["distill"].get("baseline_training") or {}).get("best_val_accuracy"),
                    "student": (rep["distill"].get("student_training") or {}).get("best_val_accuracy"),
                    "self_training": (control.get("student_training") or {}).get("best_val_accuracy")},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        results.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        f"KD gain on {described(args, next(iter(configs.values())).data.source)} (overrides: {overrides}), seeds {args.seeds}; "
        f"{platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d')}. Test {results[0]['metric'] if results else 'accuracy'} (%), mean ± std.",
        "",
        "| student | labels kept | teacher (all modalities) | control teacher (student's modality) | baseline (labels only) "
        "| self-training control | KD student | kd_gain (points) | student − control (points) "
        "| fit gap on train (points; flagged) | verdicts |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for student, fraction in ((st, f) for st in students for f in fractions):
        rows = [r for r in results if r["label_fraction"] == fraction and r["student_name"] == student]
        stat = {k: _mean_std([100 * r[k] for r in rows if r[k] is not None]) for k in COLUMNS}
        verdicts = ", ".join("no distillation (labels_only)" if not r["distilled"]
                             else f"{r['kd_verdict']} (p={r['kd_gain_p_value']:.1g})" for r in rows)
        gaps = [100 * r["fit_gap"] for r in rows if r["fit_gap"] is not None]
        flagged = sum(bool(r["fit_flagged"]) for r in rows)
        fit = (f"{statistics.mean(gaps):+.1f}; {flagged}/{len(rows)} flagged" if gaps else "n/a")
        summary.append({"student": student, "label_fraction": fraction,
                        **{k: {"mean": m, "std": s} for k, (m, s) in stat.items()},
                        "kd_gain_min": min(100 * r["kd_gain"] for r in rows),
                        "fit_gap_mean": statistics.mean(gaps) if gaps else None, "fit_flagged": flagged})
        kept = sorted({r["label_fraction_kept"] for r in rows if r["label_fraction_kept"] is not None})
        shown = (f"{100 * fraction:g}%" if not kept or kept == [fraction] else
                 f"{'/'.join(f'{100 * k:.3g}%' for k in kept)} ({100 * fraction:g}% asked)")
        lines.append(f"| {student} | {shown} | " + " | ".join("n/a" if m is None else f"{m:.1f} ± {s:.1f}"
                                                                         for m, s in stat.values())
                     + f" | {fit} | {verdicts} |")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.json").write_text(json.dumps({"recipe": args.recipe, "config": args.config,
                                                  "data": next(iter(configs.values())).data.source,
                                                  "overrides": overrides, "runs": results,
                                                  "summary": summary}, indent=2))
    (out / "kd_gain.md").write_text(text + "\n")


def teacher_and_distill(cfg, path: Path):
    """The real stages into a fresh run directory: (the RunDir, its report)."""
    from distill_export.pipeline import stage_distill, stage_train_teacher
    from distill_export.rundir import RunDir

    run = RunDir.create(path)
    run.save_config(cfg)
    stage_train_teacher(cfg, run, quiet=True)
    stage_distill(cfg, run, quiet=True)
    return run, run.load_report()


def checked(build, args):
    """build(args): the config of every run, each through load_config's checks, before any
    training; a bad --students, --set or --recipe is `error: <one line>` on stderr, exit 2."""
    from distill_export.errors import DistillExportError

    try:
        return build(args)
    except (DistillExportError, yaml.YAMLError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        raise SystemExit(2) from None


def _overrides(args) -> dict:
    from distill_export.errors import DistillExportError

    for flag, values in (("--seeds", args.seeds), ("--label-fractions", args.label_fractions),
                         ("--students", args.students), ("--fusions", args.fusions)):
        twice = sorted({v for v in values or [] if values.count(v) > 1}, key=str)
        if twice:  # one run folder per value: the second would fail only after the first trained
            raise DistillExportError(f"{flag} gives {twice[0]} twice; each value needs its own runs")
    if args.fusions and (unread := [f for f, v in (("--label-fractions", args.label_fractions),
                                                     ("--students", args.students)) if v]):
        raise DistillExportError(f"{', '.join(unread)} do{'es' * (len(unread) == 1)} not apply with --fusions (the "
                                 "fusion table runs the config's label fraction and student): drop it")  # 59th B3
    # keys a flag sets per run: a --set of one was recorded in the table's overrides while every run
    # used the flag's value (58th audit B8)
    per_run = {"seed": "--seeds", **({"data.label_fraction": "--label-fractions"} if args.label_fractions else {}),
               **({"student.name": "--students"} if args.students else {}),
               **({"teacher.fusion": "--fusions", "distill.self_training_control": "--fusions (on for its first fusion)"}
                  if args.fusions else {})}  # without the flag, --set is the base (59th B5)
    if args.config:  # the same keys in --config were dropped in silence, and the table named no config (59th B17)
        from distill_export import safe_yaml

        try:
            given = safe_yaml.load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            given = {}  # unreadable: load_config names it
        for key in per_run:
            section, _, leaf = key.partition(".")
            value = given.get(section) if leaf else given
            if isinstance(value, dict) and (leaf or section) in value:
                raise DistillExportError(f"--config {args.config} sets {key}, which {per_run[key]} sets per run: "
                                         "give it there")
    taken = {key: f"is set per run by {flag}: " + ("drop it" if key == "distill.self_training_control" else "give it there")
             for key, flag in per_run.items()}
    return dotted_sets(args.set, taken, DistillExportError)


def described(args, source: str) -> str:
    """The data that ran and where its settings came from: with --config naming a manifest, the
    table said "KD gain on avdigits" (the base recipe) for the user's video data (66th audit A3)."""
    settings = args.recipe + (f" with --config {args.config}" if args.config else "")
    return settings if source == args.recipe else f"{source} (recipe {settings})"


def _config(args, overrides: dict, where: str):
    from distill_export.config import load_config
    from distill_export.errors import DistillExportError

    from distill_export.preflight import check_config

    try:
        config = load_config(args.recipe, args.config, overrides)
        check_config(config)  # what `run` refuses before any folder (rounds > 1 with augment), before any training
        return config
    except DistillExportError as exc:
        raise DistillExportError(f"{where}: {exc}") from None


def gain_configs(args):
    """(overrides, students, fractions, {(student, fraction, seed): config}) of the gain table."""
    overrides = {"distill.self_training_control": True, **_overrides(args)}
    base = _config(args, overrides, "--recipe/--config/--set")
    fractions = args.label_fractions or list(dict.fromkeys([base.data.label_fraction, 1.0]))
    students = args.students or [base.student.name]
    configs = {(st, f, s): _config(args, {**overrides, "seed": s, "data.label_fraction": f, "student.name": st},
                                   f"student {st}, label fraction {f:g}, seed {s}")
               for st in students for f in fractions for s in args.seeds}
    return overrides, students, fractions, configs


def fusion_configs(args) -> dict:
    """{"overrides", "configs": {(seed, fusion or "all_labels"): config}} of the fusion table."""
    from distill_export.distill import labels_only
    from distill_export.errors import DistillExportError
    from distill_export.methods import term_specs

    overrides = _overrides(args)
    if labels_only(term_specs(_config(args, overrides, "--recipe/--config/--set").distill)):
        # e.g. a tuned.yaml where tune found nothing that pays: no KD student, no control to tabulate
        raise DistillExportError(f"{args.config or args.recipe}: the objective is labels only (no term reads the "
                                 "teacher), so there is no distilled student to compare; the baseline row is all there would be")
    configs = {}
    for seed in args.seeds:
        for i, fusion in enumerate(args.fusions):
            configs[seed, fusion] = _config(args, {**overrides, "seed": seed, "teacher.fusion": fusion,
                                                   "distill.self_training_control": i == 0}, f"fusion {fusion}, seed {seed}")
        configs[seed, "all_labels"] = _config(args, {**overrides, "seed": seed, "data.label_fraction": 1.0},
                                              f"all-labels reference, seed {seed}")
    return {"overrides": overrides, "configs": configs}


def fusion_rows(args, plan: dict) -> None:
    """Per seed: one run per fusion (teacher, baseline, KD student; the first also the control),
    then the all-labels reference (the baseline trained on every label). Rows = models."""
    from distill_export.distill import test_outputs, train_baseline
    from distill_export.launch import load_data
    from distill_export.nets.model_io import load_student
    from distill_export.tasks.classification.significance import compare

    out = Path(args.out)
    overrides, configs = plan["overrides"], plan["configs"]
    runs = []
    for seed in args.seeds:
        row = {"seed": seed, "val": {}, "teacher": {}, "probe": {}, "seconds": {}}
        preds = {}
        for i, fusion in enumerate(args.fusions):
            cfg = configs[seed, fusion]
            t0 = time.perf_counter()
            run, rep = teacher_and_distill(cfg, out / f"{fusion}-seed{seed}")
            if i == 0:
                row["baseline"] = rep["metrics"]["baseline"]["accuracy"]
                row["self_training"] = rep["metrics"]["self_training"]["accuracy"]
                row["control_teacher"] = rep["distill"]["self_training_control"]["teacher_accuracy"]
                row["val"]["baseline"] = rep["distill"]["baseline_training"]["best_val_accuracy"]
                row["val"]["self_training"] = rep["distill"]["self_training_control"]["student_training"]["best_val_accuracy"]
                row["late_vs_control" if fusion == "late" else f"{fusion}_vs_control"] = \
                    rep["comparisons"]["student_vs_self_training"]
                data, device = load_data(cfg)
                preds["baseline"] = test_outputs(load_student(run.file("baseline.pt"))[0], data, cfg.data.student_modality, device).argmax(1)
                labels = data.test.labels.numpy()
                label_fraction = cfg.data.label_fraction
                kept = rep["distill"].get("label_fraction_kept")  # whole rows, one per class at least (59th B4)
            row[f"kd_{fusion}"] = rep["metrics"]["student"]["accuracy"]
            row["val"][f"kd_{fusion}"] = rep["distill"]["student_training"]["best_val_accuracy"]
            row["teacher"][fusion] = rep["metrics"]["teacher"]["accuracy"]
            row["probe"][fusion] = rep["teacher"]["modality_probe"]
            row[f"kd_{fusion}_vs_baseline"] = rep["comparisons"]["student_vs_baseline"]
            preds[f"kd_{fusion}"] = test_outputs(load_student(run.file("student.pt"))[0], data, cfg.data.student_modality, device).argmax(1)
            row["seconds"][fusion] = round(time.perf_counter() - t0, 1)
        # The all-labels reference: the same student, steps and init, every training label.
        t0 = time.perf_counter()
        cfg = configs[seed, "all_labels"]
        data, device = load_data(cfg)
        ref, ref_info = train_baseline(cfg, data, device, quiet=True)
        preds["all_labels"] = test_outputs(ref, data, cfg.data.student_modality, device).argmax(1)
        row["all_labels"] = float((preds["all_labels"] == labels).mean())
        row["val"]["all_labels"] = ref_info["best_val_accuracy"]
        row["seconds"]["all_labels"] = round(time.perf_counter() - t0, 1)
        if len(args.fusions) > 1:
            a, b = (f"kd_{f}" for f in args.fusions[:2])
            row[f"{a}_vs_{b}"] = compare(preds[a], preds[b], labels, seed=seed)
        gap = row["all_labels"] - row["baseline"]
        row["gap_closed"] = {f: ((row[f"kd_{f}"] - row["baseline"]) / gap if gap > 0 else None) for f in args.fusions}
        row["gap_closed"]["self_training"] = (row["self_training"] - row["baseline"]) / gap if gap > 0 else None
        runs.append(row)
        print(json.dumps(row, default=float), flush=True)

    names = [("baseline", "baseline (labels only)"), ("self_training", f"self-training control ({args.fusions[0]}, image only)")]
    names += [(f"kd_{f}", f"KD from the {f}-fusion teacher") for f in args.fusions]
    names += [("all_labels", "all-labels reference")]
    seeds = [r["seed"] for r in runs]
    lines = [
        f"{described(args, next(iter(configs.values())).data.source)}, labels kept: "
        f"{label_fraction:g}" + ("" if kept in (None, label_fraction) else f" asked, {kept:.3g} kept") +
        f" (overrides: {overrides}); {platform.node()} "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}. Test accuracy (%); validation accuracy in brackets.",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for key, label in names:
        cells = [f"{100 * r[key]:.1f} ({100 * r['val'][key]:.1f})" for r in runs]
        m, sd = _mean_std([100 * r[key] for r in runs])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {m:.1f} ± {sd:.1f} |")
    for f in args.fusions:
        cells = [f"{100 * r['teacher'][f]:.1f}" for r in runs]
        m, sd = _mean_std([100 * r["teacher"][f] for r in runs])
        lines.append(f"| teacher ({f} fusion, image + caption) | " + " | ".join(cells) + f" | {m:.1f} ± {sd:.1f} |")
    lines += ["", "Paired comparisons per seed (points, 95% paired-bootstrap CI, McNemar p):", ""]
    first = args.fusions[0]
    for key, label in ([(f"{first}_vs_control", f"KD ({first}) − self-training control")]
                       + [(f"kd_{f}_vs_baseline", f"KD ({f}) − baseline") for f in args.fusions]
                       + ([(f"kd_{args.fusions[0]}_vs_kd_{args.fusions[1]}", f"KD ({args.fusions[0]}) − KD ({args.fusions[1]})")]
                          if len(args.fusions) > 1 else [])):
        parts = [f"seed {r['seed']}: {100 * r[key]['gain']:+.1f} [{100 * r[key]['ci95'][0]:+.1f}, "
                 f"{100 * r[key]['ci95'][1]:+.1f}], p={r[key]['p_value']:.2g}" for r in runs]
        lines.append(f"- {label}: " + "; ".join(parts))
    for f in [*args.fusions, "self_training"]:
        closed = [r["gap_closed"][f] for r in runs]
        lines.append(f"- share of the baseline → all-labels gap closed by {f}: "
                     + ", ".join("n/a" if c is None else f"{100 * c:.0f}%" for c in closed))
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_gain.json").write_text(json.dumps({"recipe": args.recipe, "config": args.config,
                                                  "data": next(iter(configs.values())).data.source,
                                                  "overrides": overrides, "fusions": args.fusions,
                                                  "runs": runs}, indent=2, default=float))
    (out / "kd_gain.md").write_text(text + "\n")


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


if __name__ == "__main__":
    main()
