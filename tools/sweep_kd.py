"""Tune the distillation method on the VALIDATION split (never the test split).

Loads a trained teacher once, computes its soft targets once per teacher view, then trains
the baseline and one KD student per setting and prints validation accuracy. Example:

    python tools/sweep_kd.py --teacher runs/a/teacher.pt --label-fraction 1.0 \
        --grid "T=1,2,4 alpha=0.3,0.7 view=full,student"
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--recipe", default="avdigits")
    ap.add_argument("--label-fraction", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--grid", default="T=2,4 alpha=0.5 view=full,student beta=0")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value overrides")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()

    import yaml

    from distill_export.config import load_config
    from distill_export.data import load_dataset
    from distill_export.distill import train_baseline, train_student
    from distill_export.train import predict
    from distill_export.train_teacher import load_teacher

    grid = {}
    for part in args.grid.split():
        key, _, values = part.partition("=")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    results = []
    for seed in args.seeds:
        cfg = load_config(args.recipe, None, {**overrides, "seed": seed, "data.label_fraction": args.label_fraction})
        data = load_dataset(cfg.data, seed)
        teacher = load_teacher(args.teacher, data)
        others = tuple(m for m in data.modalities if m != cfg.data.student_modality)
        targets = {}
        for view in grid.get("view", ["full"]):
            drop = others if view == "student" else ()
            targets[view] = predict(lambda x: teacher.forward_features(x, drop=drop), data.train.inputs, len(data.train))
        val_x, val_y = data.val.inputs[cfg.data.student_modality], data.val.labels.numpy()

        def val_acc(model) -> float:
            _, logits = predict(model.forward_features, val_x, len(data.val))
            return float((logits.argmax(1).numpy() == val_y).mean())

        base, _ = train_baseline(cfg, data, "cpu", quiet=True)
        results.append({"seed": seed, "setting": "baseline", "val_accuracy": val_acc(base)})
        print(json.dumps(results[-1]), flush=True)
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            setting = dict(zip(keys, combo))
            cfg.distill.temperature = float(setting.get("T", cfg.distill.temperature))
            cfg.distill.alpha = float(setting.get("alpha", cfg.distill.alpha))
            cfg.distill.beta = float(setting.get("beta", cfg.distill.beta))
            feats, logits = targets[setting.get("view", "full")]
            t0 = time.perf_counter()
            student, _ = train_student(cfg, data, logits, feats, "cpu", quiet=True)
            results.append({"seed": seed, "setting": setting, "val_accuracy": val_acc(student),
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(results[-1]), flush=True)
    by_setting: dict[str, list[float]] = {}
    for r in results:
        by_setting.setdefault(json.dumps(r["setting"]), []).append(r["val_accuracy"])
    print("\nmean validation accuracy over seeds:")
    for s, accs in sorted(by_setting.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"  {100 * np.mean(accs):5.1f} ± {100 * np.std(accs):.1f}  {s}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
