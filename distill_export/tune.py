"""`distill-export tune RUN`: search the objective (method, term weights, T, thresholds) on the
validation split with Optuna (TPE sampler, median pruning on per-epoch validation accuracy).

It never reads the test split: each trial trains a student against the run's teacher and is
scored by its best validation accuracy. Then a confirmation stage (confirm.py) re-trains the
top trials and the labels-only baseline with fresh seeds and picks by the mean; where no
objective is confirmed above the baseline, tune writes a labels-only objective (don't distill).
The choice is written as YAML that `distill-export run --config` takes (the test split is read
once, by that run)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from distill_export.config import RunConfig
from distill_export.config_checks import check_tune_minutes, tune_search_spaces, value_range
from distill_export.confirm import ConfirmSpec
from distill_export.errors import ConfigError, TrainingDiverged
from distill_export.files import write_text
from distill_export.flag_checks import TEACHER_TRAINING, loaded_teacher_settings_unread, settings_no_term_reads
from distill_export.tasks import get_task
from distill_export.tune_decision import confirm_top, confirmed_words, decide
from distill_export.tune_record import resumed_summary

console = Console(stderr=True, highlight=False, markup=False, emoji=False)

MAX_TUNE_ROUNDS = 3  # search space "rounds": 1 to 3 distillation rounds (each one a full training)
# The first words tune writes into its YAML: a RUN/tuned.yaml that starts so is tune's own (rewritten
# by the next `tune RUN`); one that does not was written or edited by a person and is never replaced.
TUNE_HEADER = "# distill-export tune on the validation split"



@dataclass
class TuneBudget:
    trials: int = 30
    minutes: float | None = None
    # the flags that set them, for the messages: `tune`'s; `run --tune` passes its own
    trials_flag: str = "--trials"
    minutes_flag: str = "--minutes"

    def check(self) -> None:
        most = value_range("distill.tune_trials")[1]  # run --tune's bound too (54th audit A5: 1e20 ran)
        if not 0 < self.trials <= most:
            raise ConfigError(f"tune budget: {self.trials_flag} must be in [1, {most}], got {self.trials}")
        if self.minutes is not None and not (self.minutes > 0 and self.minutes < float("inf")):
            raise ConfigError(f"tune budget: {self.minutes_flag} must be a finite number > 0, got {self.minutes}")
        check_tune_minutes(self.minutes, self.minutes_flag)


def candidate_methods(names: list[str] | None, task: str | None = None) -> list[str]:
    """Presets to search: the given ones (checked), or (None) every preset that uses the teacher
    and, when `task` is given, whose terms all apply to it (methods.presets_for_task). An empty
    list, presets that all leave the teacher out, or one for another task: refused."""
    from distill_export.methods import PRESETS, presets_for_task

    teacherless = [n for n, (terms, _) in PRESETS.items() if not terms]
    fits = presets_for_task(task) if task is not None else list(PRESETS)
    searchable = [n for n in PRESETS if n not in teacherless and n in fits]
    if names is None:
        return searchable
    if not names:
        raise ConfigError(f"--methods names no preset; list one or more of: {', '.join(searchable)} "
                          "(or leave --methods out to search them all)")
    for n in names:
        if n not in PRESETS:
            raise ConfigError(f"unknown distillation method {n!r} (choices: {', '.join(PRESETS)})")
        if n not in fits:
            raise ConfigError(f"method {n!r} does not apply to task {task!r} (methods for {task}: {', '.join(searchable)})")
    if all(n in teacherless for n in names):
        raise ConfigError(f"--methods {','.join(names)} uses no teacher, so there is nothing to search (the "
                          f"labels-only baseline is trained anyway); choose from: {', '.join(searchable)}")
    return list(dict.fromkeys(names))


def suggest_terms(trial, methods: list[str]) -> list[dict]:
    """One trial's objective as explicit terms: a preset, α, and each term's search space."""
    from distill_export.methods import PRESETS, term_class

    method = trial.suggest_categorical("method", methods)
    alpha = trial.suggest_float("alpha", 0.05, 0.95)
    names = PRESETS[method][0]
    terms = [{"name": "ce", "weight": round(alpha, 4)}]
    for name in names:
        term = {"name": name, "weight": round((1 - alpha) / len(names), 4)}
        for param, (low, high, scale) in term_class(name).search.items():
            # One shared name per hyperparameter (e.g. "kd.temperature") lets TPE learn across trials.
            value = trial.suggest_float(f"{name}.{param}", low, high, log=scale == "log")
            term[param] = round(value, 4)
        terms.append(term)
    trial.set_user_attr("terms", terms)
    return terms


def suggest_augment(trial) -> dict:
    """One trial's batch mixing (data/augment.py): the kind, and its Beta(alpha, alpha) strength
    (small alpha: lam near 0 or 1, mild mixing; alpha 1: uniform lam; above 1: strong mixing)."""
    from distill_export.data.augment import MIXES

    mix = trial.suggest_categorical("mix", list(MIXES))
    augment = {"mix": mix, "mix_alpha": 1.0}
    if mix != "none":
        augment["mix_alpha"] = round(trial.suggest_float("mix_alpha", 0.1, 2.0, log=True), 3)
    return augment


def tune(config, run, methods: list[str] | None, budget: TuneBudget, out_path: Path, quiet: bool = False,
         confirm_spec: ConfirmSpec | None = None, search: tuple[str, ...] = ("terms",)) -> dict:
    """Run the study, then the confirmation stage (confirm.py); write the chosen config (YAML)
    and every trial and confirmation score (tune.json). Returns the summary.

    search: what the trials vary. "terms" (always): the preset, its weights and parameters;
    "mix": the batch mixing and its strength too. A trial that mixes is scored against, and
    confirmed against, the labels-only baseline trained with the same mixing. "fusion": the
    teacher too, the run's own or one of each other fusion the task takes (tune_teachers.py)."""
    import optuna

    from distill_export.distill import train_baseline, train_student
    from distill_export.methods import term_specs
    from distill_export.launch import load_data
    from distill_export.rounds import next_round_targets
    from distill_export.tune_teachers import TeacherPool

    budget.check()
    confirm_spec = confirm_spec or ConfirmSpec()
    confirm_spec.check()
    methods = candidate_methods(methods, config.task)  # only the presets whose terms fit the task
    if not config.teacher.path:
        run.require("teacher.pt", "train-teacher")
    search = tune_search_spaces(search)
    data, device = load_data(config)
    from distill_export.preflight import check_fusion_search

    check_fusion_search(config, data, search, "--search")  # `tune RUN`; `run --tune` was checked with its data
    pool = TeacherPool(config, run, data, device)
    fusions = pool.fusions() if "fusion" in search else [pool.own]
    pool.targets(config)

    def train(terms: list[dict] | None, seed: int, on_epoch=None, augment: dict | None = None,
              teacher_fusion: str | None = None, rounds: int | None = None) -> float:
        """Best val accuracy of the student with `terms` (None: the labels-only baseline), trained
        with `seed` (initial weights, batch order) and `augment` (None: the config's mixing) on the
        same data, from the `teacher_fusion` teacher (None: the run's own), for `rounds` rounds
        (None: one; the last round's student is scored)."""
        cfg = _with_terms(config, terms) if terms is not None else copy.deepcopy(config)
        cfg.seed = seed
        if augment is not None:
            cfg.distill.mix, cfg.distill.mix_alpha = augment["mix"], augment["mix_alpha"]
        targets = pool.targets(cfg, None if terms is None else teacher_fusion)
        if terms is None:
            return train_baseline(cfg, data, device, quiet=True, augment=targets.augment)[1]["best_val_accuracy"]
        term_specs(cfg.distill)  # a suggested setting that is invalid fails loudly, not silently
        student, info = train_student(cfg, data, targets.logits, targets.feats, device, quiet=True,
                                      online_teacher=targets.online, augment=targets.augment, on_epoch=on_epoch)
        for r in range(2, (rounds or 1) + 1):  # as distill_runs.distill_rounds: the student times re-fitted experts
            logits, _ = next_round_targets(cfg, data, device, student, True, True, f"round {r} ")
            student, info = train_student(cfg, data, logits, None, device, quiet=True)
        return info["best_val_accuracy"]

    def objective(trial) -> float:
        def report(epoch: int, val_accuracy: float) -> None:
            trial.report(val_accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            augment = suggest_augment(trial) if "mix" in search else None
            if augment is not None and _same_mixing(augment, config.distill):
                augment = None  # the run's own mixing: the run's own baseline is its reference
            trial.set_user_attr("augment", augment)
            fusion = trial.suggest_categorical("teacher_fusion", fusions) if len(fusions) > 1 else pool.own
            fusion = None if fusion == pool.own else fusion  # None: the run's own teacher
            trial.set_user_attr("teacher_fusion", fusion)
            rounds = trial.suggest_int("rounds", 1, MAX_TUNE_ROUNDS) if "rounds" in search else None
            rounds = None if rounds == 1 else rounds  # None: one round, as without the search space
            trial.set_user_attr("rounds", rounds)
            # Pruning reads round 1's epochs only: a later round's epochs restart the count.
            return train(suggest_terms(trial, methods), config.seed, on_epoch=report, augment=augment,
                         teacher_fusion=fusion, rounds=rounds)
        except TrainingDiverged:  # a suggestion whose loss went non-finite: a trial lost, not the study
            raise optuna.TrialPruned() from None

    def progress(study, trial) -> None:
        if quiet:
            return
        value = ("pruned" if trial.state == optuna.trial.TrialState.PRUNED
                 else f"val {100 * trial.value:.1f}%")
        done = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        best = f"{100 * study.best_value:.1f}%" if done else "-"
        console.print(f"trial {trial.number + 1}: {trial.params.get('method')} {value} (best {best})")

    # The reference every objective must beat: the labels-only baseline (the same one `distill`
    # trains: labeled rows, the student's steps), on the same validation split. Without it a
    # study always names a winner, even where no distillation pays (AV-MNIST with all labels).
    baseline_val = train(None, config.seed)
    # ERROR: optuna logs a trial that raised (SIGTERM, Ctrl-C, a typed error) as a warning with its
    # whole traceback; the command line says it in one line (cli/guard.py).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.TPESampler(seed=config.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, config.distill.epochs // 3))
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    start = time.perf_counter()
    study.optimize(objective, n_trials=budget.trials,
                   timeout=None if budget.minutes is None else 60 * budget.minutes, callbacks=[progress])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        # the clock ran out (a time budget) or every trial was pruned or diverged (the trial count)
        flag = budget.minutes_flag if len(study.trials) < budget.trials else budget.trials_flag
        raise ConfigError(f"tune: no trial completed within the budget ({len(study.trials)} started); "
                          f"give it more {flag}")
    search_seconds = time.perf_counter() - start
    best = study.best_trial
    best_augment = best.user_attrs.get("augment")
    best_fusion, best_rounds = best.user_attrs.get("teacher_fusion"), best.user_attrs.get("rounds")
    # the best trial's reference: the baseline trained with its mixing (the run's own one without)
    best_baseline = baseline_val if best_augment is None else train(None, config.seed, augment=best_augment)
    summary = {
        "best": {"method": best.params["method"], "terms": best.user_attrs["terms"], "val_accuracy": best.value,
                 "augment": best_augment, "teacher_fusion": best_fusion, "rounds": best_rounds,
                 "baseline_val_accuracy": best_baseline},
        "search": list(search),
        # the teachers the trials drew from, with their own validation scores (the reason a user
        # reads; the choice is the students' validation accuracy)
        "teachers": {f: {"own": f == pool.own, "val_score": pool.val_score(f)} for f in fusions},
        "split": "validation", "trials": len(study.trials), "completed": len(completed),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "seconds": round(search_seconds, 1),
        # search-stage comparison, one seed each: the best trial's score is biased upward
        "baseline_val_accuracy": baseline_val,
        "beats_baseline": best.value > best_baseline,
        "all": [{"number": t.number, "state": t.state.name, "params": t.params, "val_accuracy": t.value}
                for t in study.trials],
    }
    summary["confirmation"] = confirm_top(train, completed, confirm_spec, config.seed, quiet)
    if summary["confirmation"] is not None:  # the decision line names the task's score (mAP50 for detection)
        summary["confirmation"]["metric"] = get_task(config.task).score_name
    summary["confirm_seconds"] = round(time.perf_counter() - start - search_seconds, 1)
    summary["decision"] = decision = decide(summary)
    header = (f"{TUNE_HEADER} ({len(completed)} completed trials"
              f"{confirmed_words(summary)}). Use: distill-export run --config {out_path.name} --out NEW\n"
              f"# {decision['line']}\n")
    body = {"method": "labels_only", "terms": decision["terms"]} if not decision["distill"] else {"terms": decision["terms"]}
    if decision["distill"] and decision.get("augment"):
        body.update(decision["augment"])  # distill.mix and distill.mix_alpha: the mixing it was confirmed with
    if decision["distill"] and "rounds" in search:  # unsearched, a recipe's own distill.rounds still applies
        body["rounds"] = decision.get("rounds") or 1
    if not decision["distill"]:  # labels only runs no round: a run's rounds 2 was refused by `run --config` (50th T2)
        body["rounds"] = 1
    # The run's whole config with the choice, no folder, no second search (B2: the choice alone ran on the demo)
    chosen_yaml = {**config.to_dict(), "out": None}
    # tune_search: the search that ran, not the run's own value (forty-third audit A2)
    chosen_yaml["distill"] = {**chosen_yaml["distill"], **body, "tune_trials": 0, "tune_minutes": 0.0,
                              "tune_search": ",".join(search)}
    # settings the chosen objective never reads (labels_only won: the teacher's view and cache) go back
    # to their defaults, so `run --config tuned.yaml` does not refuse them as unread (49th audit T1)
    defaults, chosen = RunConfig(), _with_terms(config, decision["terms"])
    chosen.distill.rounds = chosen_yaml["distill"]["rounds"]
    unread = settings_no_term_reads(chosen)
    if loaded_teacher_settings_unread(chosen):  # a loaded teacher's training settings: the control read them (51st B1)
        unread += list(TEACHER_TRAINING)
    for key in unread:
        section, name = key.split(".")
        chosen_yaml[section] = {**chosen_yaml[section], name: getattr(getattr(defaults, section), name)}
    if decision["distill"] and decision.get("teacher_fusion"):  # a new run trains that teacher
        chosen_yaml["teacher"] = {**chosen_yaml["teacher"], "fusion": decision["teacher_fusion"]}
    write_text(out_path, header + yaml.safe_dump(chosen_yaml, sort_keys=False))
    write_text(run.file("tune.json"), json.dumps(summary, indent=2))
    term_specs(chosen.distill)  # the written file loads
    return summary


def check_default_output(path: Path) -> None:
    """`tune RUN` without --out writes RUN/tuned.yaml: new, or a file an earlier tune wrote (its
    header line). A folder, a link or a file without tune's header (a person's edit) is refused
    before the search, naming --out, so neither the search nor the user's file is lost."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{path} (tune's default output) is {kind}; move it away or give --out NEW.yaml")
    with open(path, "rb") as handle:
        first = handle.read(len(TUNE_HEADER.encode()))
    if first != TUNE_HEADER.encode():
        raise ConfigError(f"{path} was not written by tune (no '{TUNE_HEADER}' header line, e.g. edited by hand) "
                          f"and is never replaced; move it away or give --out NEW.yaml")


def _same_mixing(augment: dict, distill_config) -> bool:
    """Whether a trial's mixing is the config's (no mixing at all, or the same kind and strength)."""
    if augment["mix"] != distill_config.mix:
        return False
    return augment["mix"] == "none" or augment["mix_alpha"] == distill_config.mix_alpha


def _with_terms(config, terms: list[dict]):
    trial_config = copy.deepcopy(config)
    trial_config.distill.terms = terms
    return trial_config


def tune_before_distill(config, run, quiet: bool = False):
    """`run --tune N`: search and confirm the objective on validation after the teacher, then distil
    with the choice (labels only where nothing was confirmed above the baseline). The run's
    config.yaml and report.json say what was chosen and why; a resumed run reuses the choice
    (tune_record checks it). Returns the config to distil with."""
    cfg = config.distill
    if not (cfg.tune_trials or cfg.tune_minutes):
        return config
    summary_file, chosen_file = run.file("tune.json"), run.file("tuned.yaml")
    if summary_file.exists() and chosen_file.exists():  # resumed after the search
        summary = resumed_summary(summary_file, config)
    else:
        budget = TuneBudget(cfg.tune_trials or 100_000, cfg.tune_minutes or None, "--tune", "--tune-minutes")
        summary = tune(config, run, None, budget, chosen_file, quiet, search=tune_search_spaces(cfg.tune_search))
    decision = summary["decision"]
    chosen = copy.deepcopy(config)
    chosen.distill.terms = decision["terms"]
    if decision.get("augment"):  # the mixing the objective was confirmed with
        chosen.distill.mix, chosen.distill.mix_alpha = decision["augment"]["mix"], decision["augment"]["mix_alpha"]
    if decision["distill"] and "rounds" in summary.get("search", ()):
        chosen.distill.rounds = decision.get("rounds") or 1
    if not decision["distill"]:
        chosen.distill.method = "labels_only"
    fusion = decision.get("teacher_fusion")
    if fusion and fusion != config.teacher.fusion:  # (a resumed run whose config.yaml says it: done already)
        swap_teacher(chosen, run, fusion)
    run.save_config(chosen)  # config.yaml describes what runs: the chosen terms (and teacher)
    run.update_report(tune={"trials": summary["trials"], "completed": summary["completed"],
                            "pruned": summary["pruned"], "seconds": summary["seconds"],
                            "baseline_val_accuracy": summary["baseline_val_accuracy"],
                            "best": summary["best"], "decision": decision, "teachers": summary.get("teachers"),
                            "confirmation": summary.get("confirmation")})
    if not quiet:
        console.print(f"tune: {decision['line']}")
    return chosen


def swap_teacher(chosen, run, fusion: str) -> None:
    """The run distils from the teacher fusion tune chose: its file becomes RUN/teacher.pt (a copy,
    then a rename) and report.json's teacher section measures it; `chosen` says teacher.fusion."""
    import shutil

    from distill_export.files import atomic_path
    from distill_export.launch import load_data
    from distill_export.pipeline import record_teacher
    from distill_export.tune_teachers import tune_teacher_file

    source = tune_teacher_file(run, fusion)
    with atomic_path(run.file("teacher.pt")) as tmp:
        shutil.copyfile(source, tmp)
    chosen.teacher.fusion = fusion
    data, device = load_data(chosen)
    record_teacher(chosen, run, data, device, {"source": f"tune: {source.name}, chosen on validation"})
    console.print(f"tune: the run distils from the {fusion}-fusion teacher ({source.name} -> teacher.pt)")
