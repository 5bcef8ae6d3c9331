"""`distill-export tune`: searches on the validation split only, writes a config `run --config`
takes, and refuses a bad budget or method with one line."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.config import load_config

runner = CliRunner()



def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


@pytest.mark.slow
def test_tune_confirms_the_top_trials_with_fresh_seeds_and_never_reads_the_test_split(run_copy, tmp_path, monkeypatch):
    """The real training path: the search, then the top 2 trials and the baseline re-trained with 2
    fresh seeds; the objective is chosen by the mean of those seeds' val accuracies."""
    from distill_export import distill

    def no_test_split(*args, **kwargs):
        raise AssertionError("tune read the test split")

    monkeypatch.setattr(distill, "test_outputs", no_test_split)
    monkeypatch.setattr(distill, "evaluate_student", no_test_split)
    calls = []  # (seed, terms or None for the baseline, val accuracy): spies around the real trainers

    def spy(real, is_baseline):
        def wrapped(cfg, *args, **kwargs):
            model, info = real(cfg, *args, **kwargs)
            calls.append((cfg.seed, None if is_baseline else cfg.distill.terms, info["best_val_accuracy"]))
            return model, info
        return wrapped

    monkeypatch.setattr(distill, "train_student", spy(distill.train_student, False))
    monkeypatch.setattr(distill, "train_baseline", spy(distill.train_baseline, True))
    out = tmp_path / "best.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "3", "--methods", "hinton,pseudo_label",
                                 "--confirm-top", "2", "--confirm-seeds", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "tune.json").read_text())
    assert summary["split"] == "validation" and summary["trials"] == 3
    assert {t["params"]["method"] for t in summary["all"]} <= {"hinton", "pseudo_label"}
    completed = sorted((t for t in summary["all"] if t["state"] == "COMPLETE"), key=lambda t: -t["val_accuracy"])
    assert summary["best"]["val_accuracy"] == completed[0]["val_accuracy"]
    # The search-stage reference is the run's own labels-only baseline: the same training as `distill`'s
    baseline_val = json.loads((run_copy / "report.json").read_text())["distill"]["baseline_training"]["best_val_accuracy"]
    assert summary["baseline_val_accuracy"] == baseline_val

    conf = summary["confirmation"]
    assert conf["seeds"] == [1, 2]  # the run's seed is 0: the search's; these are fresh
    search = [c for c in calls if c[0] == 0]
    fresh = [c for c in calls if c[0] != 0]
    assert len(search) == 1 + 3  # the baseline, then the trials
    top = [c["number"] for c in conf["candidates"]]
    assert top == [t["number"] for t in completed[:2]]
    # every candidate and the baseline trained once per fresh seed, and tune.json holds what they scored
    assert sorted((seed, json.dumps(terms)) for seed, terms, _ in fresh) == sorted(
        (seed, json.dumps(terms)) for seed in (1, 2) for terms in [None] + [c["terms"] for c in conf["candidates"]])
    scored = {(seed, json.dumps(terms)): acc for seed, terms, acc in fresh}
    assert conf["baseline"]["val_accuracies"] == [scored[(s, "null")] for s in (1, 2)]
    for cand in conf["candidates"]:
        assert cand["val_accuracies"] == [scored[(s, json.dumps(cand["terms"]))] for s in (1, 2)]
    means = {c["number"]: sum(c["val_accuracies"]) / 2 for c in conf["candidates"]}
    assert means[conf["winner"]] == max(means.values())  # by the mean over fresh seeds, not the search score

    decision = summary["decision"]
    text = out.read_text()
    terms = yaml.safe_load(text)["distill"]["terms"]
    assert terms == decision["terms"]
    assert decision["line"] in text.splitlines()[1]
    if decision["distill"]:
        assert terms == next(c["terms"] for c in conf["candidates"] if c["number"] == conf["winner"])
    else:
        assert terms == [{"name": "ce", "weight": 1.0}] and "not expected to pay" in text
    config = load_config("avdigits", out)  # what `run --config best.yaml` loads
    assert config.distill.terms == terms


def _fake_trainers(monkeypatch, student_score, baseline_score):
    """Stub scorers for the decision logic (the real path is covered above): val accuracy as a
    function of (alpha, seed) for a student, of seed for the baseline."""
    from distill_export import distill

    def train_student(cfg, *args, **kwargs):
        alpha = next(t["weight"] for t in cfg.distill.terms if t["name"] == "ce")
        return None, {"best_val_accuracy": student_score(alpha, cfg.seed)}

    monkeypatch.setattr(distill, "train_student", train_student)
    monkeypatch.setattr(distill, "train_baseline", lambda cfg, *a, **k: (None, {"best_val_accuracy": baseline_score(cfg.seed)}))


def test_confirmation_can_overturn_the_search_winner(run_copy, tmp_path, monkeypatch):
    # In the search (seed 0) the highest α scores best; with fresh seeds the lowest α does, and
    # beats the baseline by the same margin in every seed.
    _fake_trainers(monkeypatch, lambda a, seed: a if seed == 0 else 0.9 - a + 0.01 * seed,
                   lambda seed: 0.2 + 0.01 * seed)
    out = tmp_path / "t.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "4", "--methods", "hinton",
                                 "--confirm-top", "3", "--confirm-seeds", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "tune.json").read_text())
    cands = summary["confirmation"]["candidates"]
    alphas = {c["number"]: c["terms"][0]["weight"] for c in cands}
    assert cands[0]["search_val_accuracy"] == summary["best"]["val_accuracy"]  # the search winner: highest α
    winner = min(alphas, key=alphas.get)
    assert summary["confirmation"]["winner"] == winner != cands[0]["number"]
    assert summary["decision"]["distill"] is True
    assert yaml.safe_load(out.read_text())["distill"]["terms"] == next(c["terms"] for c in cands if c["number"] == winner)
    assert "confirmed:" in result.output


def test_no_confirmed_gain_writes_labels_only_and_run_loads_it(run_copy, tmp_path, monkeypatch):
    # The search's best trial beats the one baseline run (seed 0), but not the fresh seeds' baseline.
    _fake_trainers(monkeypatch, lambda a, seed: 0.5 + 0.1 * a + 0.001 * seed, lambda seed: 0.3 if seed == 0 else 0.7)
    out = tmp_path / "t.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "3", "--methods", "hinton,dist",
                                 "--confirm-seeds", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "tune.json").read_text())
    assert summary["beats_baseline"] is True  # what the search alone would have concluded
    assert summary["decision"] == {**summary["decision"], "distill": False, "method": "labels_only"}
    assert summary["confirmation"]["baseline"]["val_accuracies"] == [0.7, 0.7]
    assert all(g < 0 for c in summary["confirmation"]["candidates"] for g in c["gains_vs_baseline"])
    text = out.read_text()
    assert "distillation is not expected to pay here" in text.splitlines()[1]
    written = yaml.safe_load(text)
    assert (written["distill"]["method"], written["distill"]["terms"]) == ("labels_only", [{"name": "ce", "weight": 1.0}])
    run_config = yaml.safe_load((run_copy / "config.yaml").read_text())  # the whole run's, not the demo's
    assert written["data"] == run_config["data"] and written["out"] is None and written["distill"]["tune_trials"] == 0
    from distill_export.distill import labels_only
    from distill_export.methods import term_specs

    config = load_config("avdigits", out)  # what `run --config t.yaml` loads
    assert config.distill.method == "labels_only" and labels_only(term_specs(config.distill))


def test_confirm_seeds_0_lets_the_search_score_decide(run_copy, tmp_path, monkeypatch):
    # The same scores as above: without confirmation the search's best trial (beating the one
    # baseline run) is written; with 0.2 for that baseline, labels only.
    _fake_trainers(monkeypatch, lambda a, seed: 0.5 + 0.1 * a, lambda seed: 0.3)
    out = tmp_path / "t.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "2", "--methods", "hinton",
                                 "--confirm-seeds", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "tune.json").read_text())
    assert summary["confirmation"] is None and summary["decision"]["distill"] is True
    assert yaml.safe_load(out.read_text())["distill"]["terms"] == summary["best"]["terms"]
    assert "not confirmed" in out.read_text().splitlines()[0]
    _fake_trainers(monkeypatch, lambda a, seed: 0.5 + 0.1 * a, lambda seed: 0.9)
    out2 = tmp_path / "t2.yaml"  # tune --out never overwrites the first one (test_settings_refused.py)
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "2", "--methods", "hinton",
                                 "--confirm-seeds", "0", "--out", str(out2), "--quiet"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out2.read_text())["distill"]["method"] == "labels_only"


def test_a_labels_only_student_is_the_baseline_and_says_so(run_copy):
    """`distill` with a labels-only objective (what tune's fallback writes): one training, the
    student is the baseline even with unlabeled rows in the data (the demo keeps 5% of labels)."""
    import torch

    result = runner.invoke(app, ["distill", str(run_copy), "--method", "labels_only", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((run_copy / "report.json").read_text())
    assert report["distill"]["label_fraction"] < 1 and report["distill"]["distilled"] is False
    assert report["distill"]["method"] == "labels_only" and report["kd_gain"] == 0.0
    student = torch.load(run_copy / "student.pt", weights_only=True)["state_dict"]
    baseline = torch.load(run_copy / "baseline.pt", weights_only=True)["state_dict"]
    assert student.keys() == baseline.keys() and all(torch.equal(student[k], baseline[k]) for k in student)
    from distill_export.report import kd_verdict

    assert kd_verdict(report).startswith("No distillation: labels_only.")


def test_confirm_picks_by_the_fresh_seeds_mean_and_tests_the_pair():
    from distill_export.confirm import confirm, paired_p_value

    # search scores favour A; fresh seeds favour B, whose gain over the baseline varies by seed
    table = {"A": [0.60, 0.61, 0.59], "B": [0.66, 0.64, 0.67], None: [0.62, 0.61, 0.62]}
    cands = [{"number": 0, "method": "A", "terms": "A", "search_val_accuracy": 0.9},
             {"number": 1, "method": "B", "terms": "B", "search_val_accuracy": 0.7}]
    out = confirm(cands, lambda terms, seed: table[terms][seed], [0, 1, 2])
    assert out["winner"] == 1 and out["candidates"][1]["gains_vs_baseline"] == pytest.approx([0.04, 0.03, 0.05])
    assert out["distill"] is True and out["p_value"] < 0.05
    # a positive mean gain that is not consistent across seeds is not enough
    assert paired_p_value([0.03, -0.02, 0.01]) > 0.05
    assert paired_p_value([0.01, 0.01]) == 0.0 and paired_p_value([0.0, 0.0]) == 1.0


@pytest.mark.parametrize("args,needle", [
    (["--trials", "0"], "--trials must be in [1, 100000], got 0"),
    (["--trials", "-3"], "--trials must be in [1, 100000], got -3"),
    (["--trials", "99999999999999999999"], "--trials must be in [1, 100000]"),  # 54th audit A5: it ran
    (["--minutes", "0"], "--minutes must be"),
    (["--minutes", "nan"], "--minutes must be"),
    (["--methods", "hinton,bogus"], "unknown distillation method 'bogus'"),
    (["--confirm-seeds", "1"], "--confirm-seeds must be 0 (off) or in [2, 100]"),
    (["--confirm-seeds", "99999999"], "--confirm-seeds must be 0 (off) or in [2, 100]"),  # A5: it started
    (["--confirm-top", "0"], "--confirm-top must be in [1, 100]"),
])
def test_tune_bad_budget_or_method_is_one_line(run_copy, args, needle):
    before = sorted(p.name for p in run_copy.iterdir())
    result = runner.invoke(app, ["tune", str(run_copy), *args, "--quiet"])
    _one_line_error(result, needle)
    assert sorted(p.name for p in run_copy.iterdir()) == before  # nothing written


@pytest.mark.parametrize("flags,needle", [
    (["--method", "nope"], "unknown distillation method 'nope'"),
])
def test_run_refuses_an_unknown_method_before_training(tmp_path, flags, needle):
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), *flags, "--quiet"])
    _one_line_error(result, needle)
    assert not (tmp_path / "r").exists()


def test_kd_gain_fusion_table_refuses_a_labels_only_config_in_one_line(tmp_path):
    """tools/kd_gain.py --fusions with what tune writes when nothing pays: one line, no training."""
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "tuned.yaml"
    config.write_text("distill:\n  method: labels_only\n  terms: [{name: ce, weight: 1.0}]\n")
    before = config.read_bytes()
    tool = Path(__file__).resolve().parents[1] / "tools" / "kd_gain.py"
    proc = subprocess.run([sys.executable, str(tool), "--fusions", "late", "concat", "--config", str(config),
                           "--seeds", "0", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "labels only" in lines[0], lines
    assert config.read_bytes() == before and not (tmp_path / "out").exists()


def test_kd_gain_refuses_what_run_refuses_before_any_training(tmp_path):
    """--set distill.rounds=2 --set distill.augment=shift trained nothing and ended in a ConfigError
    traceback from the first run's data stage; `run` refuses it before any folder (check_config)."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "kd_gain.py"
    proc = subprocess.run([sys.executable, str(tool), "--seeds", "3", "--set", "distill.rounds=2", "--set",
                           "distill.augment=shift", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0] == ("error: --recipe/--config/--set: distill.rounds > 1 needs distill.augment=none (the targets "
                        "of later rounds are fixed logits, computed once on the un-augmented rows)"), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit", [{"distill": {"teacher_view": "student", "teacher_cache": False, "kd_impl": "reference"}},
                                  {"distill": {"rounds": 2}},
                                  {"teacher": {"path": "RUN/teacher.pt", "epochs": 1, "lr": 0.123}}])
def test_a_labels_only_choice_resets_the_settings_it_never_reads(run_copy, tmp_path, monkeypatch, edit):
    """49th audit T1: a run with teacher_view student, teacher_cache false and kd_impl reference (and,
    50th T2, rounds 2; 51st B1, a loaded teacher's training settings, which only the control read);
    tune chose labels_only and kept them, so the documented `run --config tuned.yaml` refused them."""
    from distill_export.cli.options import load
    from distill_export.config import RunConfig

    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    for section, values in edit.items():
        config[section].update({k: v.replace("RUN", str(run_copy)) if isinstance(v, str) else v
                                for k, v in values.items()})
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = json.loads((run_copy / "state.json").read_text())
    state["written_config"] = config  # as if the run had been made with them
    (run_copy / "state.json").write_text(json.dumps(state))
    _fake_trainers(monkeypatch, lambda a, seed: 0.5 + 0.1 * a + 0.001 * seed, lambda seed: 0.3 if seed == 0 else 0.7)
    out = tmp_path / "t.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "2", "--methods", "hinton",
                                 "--confirm-seeds", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text())["distill"]
    assert (written["method"], written["teacher_view"], written["teacher_cache"], written["kd_impl"], written["rounds"]) \
        == ("labels_only", "full", True, "auto", 1)  # rounds 2 too: labels only runs no round (50th audit T2)
    if "teacher" in edit:
        teacher = yaml.safe_load(out.read_text())["teacher"]
        assert (teacher["epochs"], teacher["lr"]) == (RunConfig().teacher.epochs, RunConfig().teacher.lr)
    assert load(None, out, {}).distill.method == "labels_only"  # `run --config t.yaml` accepts it
